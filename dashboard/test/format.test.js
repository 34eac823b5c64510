// Unit tests of the pure helpers: formatting, step snapping, finding and grouping, sparkline geometry.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { formatValue, humanize, relativeTime, snapToStep, stepDecimals, withUnit } from '../public/js/format.js';
import { groupDevices, matches } from '../public/js/finder.js';
import { sparklinePath } from '../public/js/sparkline.js';
import { commandText } from '../public/js/controls.js';

test('humanize turns meta names into labels', () => {
  assert.equal(humanize('color_temp'), 'Color temp');
  assert.equal(humanize('powerW'), 'Power w');
  assert.equal(humanize('water-temp'), 'Water temp');
  assert.equal(humanize(''), '');
});

test('values are formatted by type, with units', () => {
  assert.equal(formatValue(21.456, { type: 'float' }), '21.5');
  assert.equal(formatValue(1.23456, { type: 'float' }), '1.23');
  assert.equal(formatValue(1234.5, { type: 'float' }), '1235');
  assert.equal(formatValue(21.5, { type: 'float', step: 0.5 }), '21.5');
  assert.equal(formatValue(40, { type: 'int' }), '40');
  assert.equal(formatValue(true, { type: 'bool' }), 'Yes');
  assert.equal(formatValue(true, { type: 'bool', control: true }), 'On');
  assert.equal(formatValue('heat', { type: 'enum' }), 'heat');
  assert.equal(formatValue(undefined), '—');
  assert.equal(formatValue({ a: 1 }), '{"a":1}');
  assert.equal(withUnit(21.5, { type: 'float', unit: '°C' }), '21.5 °C');
  assert.equal(withUnit(null, { unit: '°C' }), '—');
});

test('relative time reads naturally', () => {
  assert.equal(relativeTime(1000, 1500), 'just now');
  assert.equal(relativeTime(0, 5_000), '5 s ago');
  assert.equal(relativeTime(0, 180_000), '3 min ago');
  assert.equal(relativeTime(0, 7_200_000), '2 h ago');
  assert.equal(relativeTime(null, 0), 'never');
});

test('control values snap to the step grid and range the device expects', () => {
  assert.equal(stepDecimals(0.5), 1);
  assert.equal(stepDecimals(1e-7), 7);
  assert.equal(stepDecimals(100), 0);
  const setpoint = { type: 'float', min: 5, max: 35, step: 0.5 };
  assert.equal(snapToStep('21.26', setpoint), 21.5);
  assert.equal(snapToStep(21.2 + 0.1, setpoint), 21.5);
  assert.equal(snapToStep(99, setpoint), 35);
  const kelvin = { type: 'int', min: 2700, max: 6500, step: 100 };
  assert.equal(snapToStep(3049, kelvin), 3000);
  assert.equal(snapToStep('x', kelvin), null);
});

test('snapping never leaves [min, max], also where the step grid does not reach max', () => {
  const uneven = { type: 'int', min: 0, max: 10, step: 4 };
  assert.equal(snapToStep(10, uneven), 8, 'the grid point 12 is past max');
  assert.equal(snapToStep(100, uneven), 8);
  assert.equal(snapToStep(5, uneven), 4);
  assert.equal(snapToStep(-3, uneven), 0);
  assert.equal(snapToStep(9.9, { type: 'float', max: 9.9, step: 2 }), 8, 'without min the grid counts from 0');
  const quarter = { type: 'float', min: 0.25, max: 0.75, step: 0.5 };
  assert.equal(snapToStep(0.75, quarter), 0.75, 'not rounded to the step\'s one decimal (0.8)');
  assert.equal(snapToStep(0.6, quarter), 0.75);
  assert.equal(snapToStep(11, { type: 'int', max: 10.5 }), 10);
  assert.equal(snapToStep(0, { type: 'int', min: 0.5, max: 3 }), 1);
  for (let v = -5; v <= 40; v += 0.37) {
    for (const spec of [uneven, quarter, { type: 'float', min: 5, max: 35, step: 0.5 }, { type: 'int', min: 2700, max: 6500, step: 100 }]) {
      const snapped = snapToStep(v, spec);
      assert.ok(snapped >= spec.min && snapped <= spec.max, `${v} -> ${snapped} outside ${spec.min}..${spec.max}`);
    }
  }
});

test('filter matches every word against name, id, kind, room and condition', () => {
  const d = { id: 'light-001', meta: { name: 'Kitchen Light', kind: 'light', room: 'Kitchen' } };
  assert.ok(matches(d, ''));
  assert.ok(matches(d, 'kitchen'));
  assert.ok(matches(d, 'LIGHT 001'));
  assert.ok(matches(d, 'online', 'Online'));
  assert.ok(!matches(d, 'kitchen plug'));
  assert.ok(matches({ id: 'x' }, 'x'), 'a device without meta is found by id');
});

test('grouping by kind or room, with a last group for devices without it', () => {
  const devices = [
    { id: 'a', meta: { kind: 'plug', room: 'Office' } },
    { id: 'b', meta: { kind: 'light', room: 'Kitchen' } },
    { id: 'c', meta: { kind: 'light' } },
    { id: 'd', meta: null },
  ];
  assert.deepEqual(groupDevices(devices, 'none').map((g) => g.devices.length), [4]);
  assert.deepEqual(groupDevices(devices, 'kind').map((g) => [g.label, g.devices.map((d) => d.id)]), [
    ['Light', ['b', 'c']], ['Plug', ['a']], ['Other kinds', ['d']],
  ]);
  assert.deepEqual(groupDevices(devices, 'room').map((g) => g.label), ['Kitchen', 'Office', 'No room']);
});

test('sparkline path spans the box, newest value at the right edge', () => {
  const { line, area, last, min, max } = sparklinePath([1, 3, 2], 100, 20, 3);
  assert.equal(line, 'M0 18 L50 2 L100 10');
  assert.ok(area.endsWith('L100 20 L0 20 Z'));
  assert.deepEqual(last, [100, 10]);
  assert.deepEqual([min, max], [1, 3]);
  const partial = sparklinePath([5, 5], 100, 20, 5);
  assert.equal(partial.line, 'M75 10 L100 10', 'fewer points than slots sit at the right; flat data is centred');
  assert.equal(sparklinePath([], 100, 20).line, '');
  assert.equal(sparklinePath([NaN, 4], 100, 20, 2).line, 'M92 10 L100 10');
});

test('command status text says what happened', () => {
  const spec = { type: 'int', unit: '%' };
  assert.equal(commandText({ status: 'pending', target: 40 }, spec, 0), 'Sending 40 %…');
  assert.equal(commandText({ status: 'pending', stage: 'sent', target: 40 }, spec, 0), 'Sent 40 %, waiting for the device…');
  assert.equal(commandText({ status: 'ok', at: 0 }, spec, 1000), 'Done');
  assert.equal(commandText({ status: 'ok', at: 0 }, spec, 60_000), '', '"Done" fades');
  assert.equal(commandText({ status: 'rejected', error: 'too bright' }, spec, 0), 'Rejected: too bright');
  assert.match(commandText({ status: 'offline' }, spec, 0), /offline/);
  assert.match(commandText({ status: 'timeout' }, spec, 0), /no answer/);
  assert.equal(commandText(undefined, spec, 0), '');
});

test('small and large readings keep meaningful digits', () => {
  assert.equal(formatValue(0.0012, { type: 'float' }), '0.0012');
  assert.equal(formatValue(0.2134, { type: 'float' }), '0.21');
  assert.equal(formatValue(0, { type: 'float' }), '0');
  assert.equal(formatValue(46, { type: 'float' }), '46.0');
  assert.equal(formatValue(46, {}), '46');
});
