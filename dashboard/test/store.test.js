// Unit tests of the device store: applying protocol messages, series, conditions, commands.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { DeviceStore, MIN_STALE_MS } from '../public/js/store.js';

const META = {
  kind: 'light', name: 'Desk', room: 'Office',
  telemetry: { power: { type: 'float', unit: 'W' }, mode: { type: 'enum', choices: ['a', 'b'] } },
  controls: { on: { type: 'bool' } },
};

function setup() {
  let now = 1_000_000;
  const store = new DeviceStore({ seriesLength: 5, now: () => now });
  store.setConnection('open');
  store.setBroker('up');
  const changes = [];
  store.onChange((ids) => changes.push(ids === null ? null : [...ids]));
  return { store, changes, tick: (ms) => { now += ms; }, at: () => now };
}

test('a snapshot creates devices, and every later one replaces them, recovered or not', () => {
  const { store } = setup();
  store.applySnapshot({
    devices: [
      { id: 'a', meta: META, presence: 'online', state: { on: true }, telemetry: { power: 3 }, seq: 1, ts: 999_000 },
      { id: 'b', meta: null, presence: 'unknown', state: null, telemetry: null, seq: 0, ts: null },
    ],
    recovered: null,
  });
  assert.deepEqual(store.list().map((d) => d.id), ['b', 'a'], 'sorted by name, id when there is no name');
  const a = store.devices.get('a');
  assert.deepEqual(a.state, { on: true });
  assert.deepEqual(store.seriesValues(a, 'power'), [3]);
  assert.equal(a.receivedAt, 999_000, 'age comes from the bridge timestamp, not from the reconnect');

  // A resume replays telemetry, not removals: b was removed while the page was away.
  store.applySnapshot({ devices: [{ id: 'a', meta: META, presence: 'online', seq: 1 }, { id: 'c', presence: 'online' }], recovered: true });
  assert.deepEqual([...store.devices.keys()].sort(), ['a', 'c'], 'a recovered snapshot prunes too');
  assert.deepEqual(store.seriesValues(store.devices.get('a'), 'power'), [3], 'and keeps what it does not replace');

  store.applySnapshot({ devices: [{ id: 'a', meta: META, presence: 'offline', state: { on: false }, telemetry: { power: 3 }, seq: 0, ts: 999_000 }], recovered: false });
  assert.deepEqual([...store.devices.keys()], ['a'], 'devices the bridge no longer reports are gone');
  assert.deepEqual(store.seriesValues(store.devices.get('a'), 'power'), [3], 'the same reading is not charted twice');
  assert.equal(store.devices.get('a').presence, 'offline');
});

test('telemetry updates values and keeps a bounded series of numeric fields only', () => {
  const { store, changes } = setup();
  store.applyDevice({ device: 'a', meta: META });
  for (let i = 1; i <= 7; i++) store.applyTelemetry({ device: 'a', seq: i, ts: i, data: { power: i, mode: 'a', extra: i * 10 } });
  const a = store.devices.get('a');
  assert.deepEqual(store.seriesValues(a, 'power'), [3, 4, 5, 6, 7]);
  assert.deepEqual(store.seriesValues(a, 'extra'), [30, 40, 50, 60, 70], 'numbers without meta are charted too');
  assert.equal(a.series.has('mode'), false);
  assert.deepEqual(a.telemetry, { power: 7, mode: 'a', extra: 70 });
  assert.deepEqual(changes.at(-1), ['a']);
});

test('history joins the live points by seq: no repeats, oldest first, within the series length', () => {
  const { store } = setup();
  store.applyDevice({ device: 'a', meta: META });
  store.applyTelemetry({ device: 'a', seq: 10, ts: 10, data: { power: 10 } });
  store.applyTelemetry({ device: 'a', seq: 11, ts: 11, data: { power: 11 } });
  const samples = [6, 7, 8, 9, 10].map((seq) => ({ seq, ts: seq, data: { power: seq, mode: 'a' } }));
  samples.push({ seq: 5, ts: 5, data: { power: null } }, { bad: true });
  const a = store.devices.get('a');
  const version = a.seriesVersion;
  store.fillSeries('a', samples);
  assert.ok(a.seriesVersion > version, 'the charts know to draw again');
  assert.deepEqual(store.seriesValues(a, 'power'), [7, 8, 9, 10, 11]);
  assert.equal(a.series.has('mode'), false);
  // A late live reading that history already brought is not added again.
  store.applyTelemetry({ device: 'a', seq: 11, ts: 11, data: { power: 11 } });
  assert.deepEqual(store.seriesValues(a, 'power'), [7, 8, 9, 10, 11]);
});

test('after a restart (a new epoch) the new stream continues the chart instead of sorting into it', () => {
  const { store } = setup();
  store.applySnapshot({ devices: [{ id: 'a', meta: META, presence: 'online', telemetry: { power: 1 }, seq: 500, ts: 1 }], epoch: 'e1' });
  store.applyTelemetry({ device: 'a', seq: 501, ts: 2, data: { power: 2 } });
  store.applySnapshot({ devices: [{ id: 'a', meta: META, presence: 'online', telemetry: { power: 3 }, seq: 1, ts: 3 }], recovered: false, epoch: 'e2' });
  store.applyTelemetry({ device: 'a', seq: 2, ts: 4, data: { power: 4 } });
  store.fillSeries('a', [{ seq: 1, ts: 3, data: { power: 3 } }]);
  assert.deepEqual(store.seriesValues(store.devices.get('a'), 'power'), [1, 2, 3, 4]);
});

test('a fresh snapshot of the same epoch keeps the numbering: history joins without repeats', () => {
  // A resync without resuming (a resume point too big to send, or a gap the ring lost).
  const { store } = setup();
  store.applySnapshot({ devices: [{ id: 'a', meta: META, presence: 'online', telemetry: { power: 10 }, seq: 10, ts: 10 }], epoch: 'e1' });
  for (const seq of [11, 12, 13]) store.applyTelemetry({ device: 'a', seq, ts: seq, data: { power: seq } });
  store.applySnapshot({ devices: [{ id: 'a', meta: META, presence: 'online', telemetry: { power: 15 }, seq: 15, ts: 15 }], recovered: false, epoch: 'e1' });
  store.fillSeries('a', [12, 13, 14, 15].map((seq) => ({ seq, ts: seq, data: { power: seq } })));
  assert.deepEqual(store.seriesValues(store.devices.get('a'), 'power'), [11, 12, 13, 14, 15]);

  // Then the bridge restarts: the old points stay before the new stream's.
  store.applySnapshot({ devices: [{ id: 'a', meta: META, presence: 'online', telemetry: { power: 1 }, seq: 1, ts: 16 }], recovered: false, epoch: 'e2' });
  store.fillSeries('a', [{ seq: 1, ts: 16, data: { power: 1 } }]);
  store.applyTelemetry({ device: 'a', seq: 2, ts: 17, data: { power: 2 } });
  assert.deepEqual(store.seriesValues(store.devices.get('a'), 'power'), [13, 14, 15, 1, 2]);
});

test('control rights follow the bridge globs; unknown means allowed', () => {
  const { store } = setup();
  assert.equal(store.canControl('plug-1'), true);
  store.setPermissions({ read: ['*'], control: ['light-*', 'blind-00?'] });
  assert.equal(store.canControl('light-12'), true);
  assert.equal(store.canControl('blind-001'), true);
  assert.equal(store.canControl('blind-0012'), false);
  assert.equal(store.canControl('plug-1'), false);
  store.setPermissions({ read: ['*'], control: [] });
  assert.equal(store.canControl('light-1'), false);
});

test('permissions that no longer let the page read a device drop it', () => {
  const { store, changes } = setup();
  for (const id of ['light-1', 'light-2', 'plug-1']) store.applyDevice({ device: id, meta: META });
  store.setPermissions({ read: ['*'], control: [] });
  assert.equal(store.devices.size, 3);
  store.setPermissions({ read: ['light-*'], control: ['light-1'] });
  assert.deepEqual([...store.devices.keys()], ['light-1', 'light-2']);
  assert.equal(changes.at(-1), null, 'the whole page is rendered again');
  store.setPermissions({ read: [], control: [] });
  assert.equal(store.devices.size, 0);
});

test('state, presence and device messages; removal drops the device', () => {
  const { store } = setup();
  store.applyDevice({ device: 'a', meta: META });
  store.applyState({ device: 'a', state: { on: true } });
  store.applyState({ device: 'a', state: { level: 2 } });
  assert.deepEqual(store.devices.get('a').state, { on: true, level: 2 });
  store.applyPresence({ device: 'a', presence: 'offline' });
  assert.equal(store.condition(store.devices.get('a')).status, 'offline');
  store.applyDevice({ device: 'a', meta: null, removed: true });
  assert.equal(store.devices.size, 0);
});

test('condition: the page link, then the broker link, then presence, then data age', () => {
  const { store, tick, at } = setup();
  store.applyDevice({ device: 'a', meta: META });
  const a = store.devices.get('a');
  assert.equal(store.condition(a).status, 'unknown');
  store.applyPresence({ device: 'a', presence: 'online' });
  // A steady 200 ms pace: stale after the floor, not after 4 x 200 ms.
  for (let i = 0; i < 5; i++) {
    tick(200);
    store.applyTelemetry({ device: 'a', seq: i + 1, ts: at(), data: { power: 1 } });
  }
  assert.equal(store.condition(a).status, 'online');
  tick(MIN_STALE_MS - 1);
  assert.equal(store.condition(a).status, 'online');
  tick(2);
  assert.equal(store.condition(a).status, 'stale');
  assert.match(store.condition(a).reason, /no data/);

  store.applyTelemetry({ device: 'a', seq: 9, ts: 9, data: { power: 1 } });
  store.setBroker('down');
  assert.equal(store.condition(a).status, 'stale');
  assert.match(store.condition(a).reason, /broker/);
  store.setBroker('up');
  store.setConnection('down');
  assert.match(store.condition(a).reason, /No connection to the bridge/);
});

test('a slow device is judged by its own pace', () => {
  const { store, tick, at } = setup();
  store.applyDevice({ device: 'a', meta: META });
  store.applyPresence({ device: 'a', presence: 'online' });
  for (let i = 0; i < 4; i++) {
    tick(10_000);
    store.applyTelemetry({ device: 'a', seq: i + 1, ts: at(), data: { power: 1 } });
  }
  tick(39_000);
  assert.equal(store.condition(store.devices.get('a')).status, 'online');
  tick(2_000);
  assert.equal(store.condition(store.devices.get('a')).status, 'stale');
});

test('readings that arrive out of order do not make a device look slower', () => {
  const { store, tick, at } = setup();
  store.applyDevice({ device: 'a', meta: META });
  store.applyPresence({ device: 'a', presence: 'online' });
  const start = at();
  // Taken every 10 s, delivered pairwise swapped: 2, 1, 4, 3, 6, 5, 8, 7.
  for (const n of [2, 1, 4, 3, 6, 5, 8, 7]) {
    tick(10_000);
    store.applyTelemetry({ device: 'a', seq: n, ts: start + n * 10_000, data: { power: n } });
  }
  tick(41_000);
  assert.equal(store.condition(store.devices.get('a')).status, 'stale', 'judged by 10 s, not 20 s');
});

test('readings replayed in a burst after a reconnect keep a slow device at its own pace', () => {
  const { store, tick, at } = setup();
  store.applyDevice({ device: 'a', meta: META });
  store.applyPresence({ device: 'a', presence: 'online' });
  store.applyTelemetry({ device: 'a', seq: 1, ts: at(), data: { power: 1 } });
  // Away for 90 s: the nine readings taken every 10 s meanwhile arrive at once.
  const since = at();
  tick(90_000);
  for (let i = 1; i <= 9; i++) store.applyTelemetry({ device: 'a', seq: i + 1, ts: since + i * 10_000, data: { power: i } });
  tick(39_000);
  assert.equal(store.condition(store.devices.get('a')).status, 'online', 'a 10 s device, 39 s after its last reading');
  tick(2_000);
  assert.equal(store.condition(store.devices.get('a')).status, 'stale');
});

test('command progress is kept per control; a newer command wins', () => {
  const { store } = setup();
  store.applyDevice({ device: 'a', meta: META });
  const a = store.devices.get('a');
  store.applyCommand({ req: 'c1', device: 'a', params: { on: true }, status: 'pending', final: false });
  assert.equal(a.commands.get('on').status, 'pending');
  assert.equal(a.commands.get('on').target, true);
  store.applyCommand({ req: 'c2', device: 'a', params: { on: false }, status: 'pending', final: false });
  store.applyCommand({ req: 'c1', device: 'a', params: { on: true }, status: 'ok', final: true });
  assert.equal(a.commands.get('on').req, 'c2', 'the late answer to c1 does not overwrite c2');
  assert.equal(a.commands.get('on').status, 'pending');
  store.applyCommand({ req: 'c2', device: 'a', params: { on: false }, status: 'rejected', final: true, error: 'no' });
  assert.deepEqual([a.commands.get('on').status, a.commands.get('on').error], ['rejected', 'no']);
});
