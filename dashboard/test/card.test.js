// Unit tests of the card's pure parts: which fields and controls a meta yields, and in what order.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { orderedControls, telemetryFields } from '../public/js/card.js';

test('controls are ordered switches, choices, numbers, text; meta order within each', () => {
  const order = orderedControls({
    note: { type: 'string' }, level: { type: 'int', min: 0, max: 9 }, mode: { type: 'enum', choices: ['a'] },
    on: { type: 'bool' }, temp: { type: 'float' }, odd: { type: 'colour' },
  }).map(([name]) => name);
  assert.deepEqual(order, ['on', 'mode', 'level', 'temp', 'note', 'odd']);
});

test('telemetry fields follow meta, then fields the meta does not describe', () => {
  const device = { meta: { telemetry: { b: {}, a: {} } }, telemetry: { z: 1, a: 2, y: 3 } };
  assert.deepEqual(telemetryFields(device), ['b', 'a', 'y', 'z']);
  assert.deepEqual(telemetryFields({ meta: null, telemetry: { t: 1 } }), ['t']);
});
