// Unit tests of the protocol client against a fake socket and a fake clock.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { BridgeClient, SUBPROTOCOL, backoffDelay, CHECK_TIMEOUT_MS, COMMAND_GRACE_MS, CONNECT_TIMEOUT_MS } from '../public/js/client.js';
import { FakeClock, recorder, socketFactory } from './fakes.js';

const WELCOME = {
  type: 'welcome', protocol: 'iotbridge.v1', server: 'iot-bridge 0.1.0', instance: 'i1',
  identity: 'tester', permissions: { read: ['*'], control: ['*'] }, broker: 'up',
  limits: { max_frame_bytes: 65536, max_subscriptions: 256 },
};

function device(id, seq = 0, extra = {}) {
  return { id, meta: { kind: 'light', name: id }, presence: 'online', state: { on: false }, telemetry: { power: 1 }, seq, ts: 1, ...extra };
}

/** A started client with its socket accepted, welcomed and subscribed (snapshot delivered). */
function connected({ devices = [device('a', 5)], resume = 'tok1', random = () => 0.5 } = {}) {
  const clock = new FakeClock();
  const factory = socketFactory();
  const client = new BridgeClient({ url: 'wss://bridge/ws', connect: factory.connect, clock, random });
  const rec = recorder(client);
  client.start();
  const socket = factory.last;
  socket.accept();
  socket.deliver(WELCOME);
  const sub = socket.lastSent('subscribe');
  socket.deliver({ type: 'snapshot', req: sub.req, devices, resume });
  return { clock, factory, client, rec, socket };
}

test('connects with the JSON subprotocol and subscribes to every device without since', () => {
  const { factory, client, rec } = connected();
  assert.equal(factory.sockets.length, 1);
  assert.equal(factory.last.url, 'wss://bridge/ws');
  assert.deepEqual(factory.last.protocols, [SUBPROTOCOL]);
  const sub = factory.last.sent[0];
  assert.equal(sub.type, 'subscribe');
  assert.deepEqual(sub.devices, ['*']);
  assert.equal('since' in sub, false, 'a first subscribe has no resume token');
  assert.equal(client.state, 'open');
  assert.deepEqual(rec.of('connection').map((e) => e.state), ['connecting', 'open']);
  assert.equal(rec.of('welcome')[0].identity, 'tester');
  assert.deepEqual(rec.of('broker').map((e) => e.status), ['up'], 'welcome carries the broker state');
  const snap = rec.of('snapshot')[0];
  assert.equal(snap.devices[0].id, 'a');
  assert.equal(snap.resumed, false);
});

test('passes stream messages through and drops telemetry it has already seen', () => {
  const { socket, rec } = connected({ devices: [device('a', 5)] });
  socket.deliver({ type: 'telemetry', device: 'a', seq: 5, ts: 2, data: { power: 9 } }); // in the snapshot
  socket.deliver({ type: 'telemetry', device: 'a', seq: 6, ts: 3, data: { power: 2 } });
  socket.deliver({ type: 'telemetry', device: 'a', seq: 6, ts: 3, data: { power: 2 } }); // repeat
  socket.deliver({ type: 'telemetry', device: 'a', seq: 9, ts: 4, data: { power: 3 } }); // gap is fine
  socket.deliver({ type: 'telemetry', device: 'b', seq: 1, ts: 4, data: { t: 1 } }); // new device
  socket.deliver({ type: 'state', device: 'a', ts: 5, state: { on: true } });
  socket.deliver({ type: 'presence', device: 'a', presence: 'offline' });
  socket.deliver({ type: 'broker', status: 'down' });
  socket.deliver({ type: 'lagging', conflated: 3 });
  socket.deliver({ type: 'device', device: 'c', meta: { kind: 'x' } });
  assert.deepEqual(rec.of('telemetry').map((e) => [e.device, e.seq]), [['a', 6], ['a', 9], ['b', 1]]);
  assert.deepEqual(rec.of('state')[0].state, { on: true });
  assert.equal(rec.of('presence')[0].presence, 'offline');
  assert.deepEqual(rec.of('broker').map((e) => e.status), ['up', 'down']);
  assert.equal(rec.of('lagging')[0].conflated, 3);
  assert.equal(rec.of('device')[0].device, 'c');
});

test('ignores frames that are not JSON objects with a type, and unknown types', () => {
  const { socket, rec, client } = connected();
  socket.deliver('not json');
  socket.deliver('[1,2]');
  socket.deliver({ type: 'future_thing', x: 1 });
  assert.equal(rec.of('protocol_error').length, 2);
  assert.equal(rec.of('unknown')[0].x, 1);
  assert.equal(client.state, 'open', 'bad frames do not drop the connection');
});

test('backoff grows exponentially, is capped, and has jitter within [base/2, base]', () => {
  const policy = { initialMs: 500, maxMs: 8000, factor: 2 };
  assert.equal(backoffDelay(0, policy, () => 0), 250);
  assert.equal(backoffDelay(0, policy, () => 0.999999), 500);
  assert.equal(backoffDelay(3, policy, () => 0), 2000);
  assert.equal(backoffDelay(10, policy, () => 0), 4000, 'capped at maxMs');
  assert.equal(backoffDelay(10, policy, () => 0.999999), 8000);
  const spread = new Set(Array.from({ length: 20 }, (_, i) => backoffDelay(2, policy, () => i / 20)));
  assert.ok(spread.size > 10, 'different random draws give different delays');
});

test('reconnects by itself with growing delays and resumes with the last token', () => {
  const { clock, factory, client, rec } = connected({ resume: 'tok1', random: () => 0 });
  factory.last.drop(1006);
  assert.equal(client.state, 'down');
  const down = rec.of('connection').at(-1);
  assert.equal(down.state, 'down');
  assert.equal(down.retryInMs, 250);

  // First retry fails to connect at all: the next wait is longer.
  clock.advance(249);
  assert.equal(factory.sockets.length, 1, 'waits out the backoff');
  clock.advance(1);
  assert.equal(factory.sockets.length, 2);
  factory.last.drop(1006);
  assert.equal(rec.of('connection').at(-1).retryInMs, 500);
  clock.advance(500);
  assert.equal(factory.sockets.length, 3);
  factory.last.drop(1006);
  assert.equal(rec.of('connection').at(-1).retryInMs, 1000);
  clock.advance(1000);

  // This one works: it resubscribes with `since`, and the snapshot resets the backoff.
  const socket = factory.last;
  socket.accept();
  socket.deliver(WELCOME);
  const sub = socket.lastSent('subscribe');
  assert.equal(sub.since, 'tok1');
  assert.deepEqual(sub.devices, ['*']);
  socket.deliver({ type: 'snapshot', req: sub.req, devices: [device('a', 0)], resume: 'tok2', recovered: false });
  assert.equal(client.state, 'open');
  const snap = rec.of('snapshot').at(-1);
  assert.equal(snap.resumed, true);
  assert.equal(snap.recovered, false);

  // A fresh snapshot restarts the seq count (a restarted bridge numbers from 0 again).
  socket.deliver({ type: 'telemetry', device: 'a', seq: 1, ts: 9, data: { power: 4 } });
  assert.equal(rec.of('telemetry').at(-1).seq, 1);

  socket.drop(1001, 'bridge shutting down');
  assert.equal(rec.of('connection').at(-1).retryInMs, 250, 'backoff starts over after a good connection');
  clock.advance(250);
  factory.last.accept();
  assert.equal(factory.last.lastSent('subscribe').since, 'tok2', 'the newest token is used');
});

test('a recovered resume keeps the seqs so replayed messages are not shown twice', () => {
  const { factory, rec, clock } = connected({ devices: [device('a', 5)], random: () => 0 });
  factory.last.deliver({ type: 'telemetry', device: 'a', seq: 6, ts: 2, data: { power: 1 } });
  factory.last.drop();
  clock.advance(250);
  const s = factory.last;
  s.accept();
  const sub = s.lastSent('subscribe');
  s.deliver({ type: 'snapshot', req: sub.req, devices: [], resume: 't', recovered: true });
  s.deliver({ type: 'telemetry', device: 'a', seq: 6, ts: 2, data: { power: 1 } });
  s.deliver({ type: 'telemetry', device: 'a', seq: 7, ts: 3, data: { power: 2 } });
  assert.deepEqual(rec.of('telemetry').map((e) => e.seq), [6, 7]);
});

test('reconnectNow skips the wait; stop ends everything and never reconnects', () => {
  const { clock, factory, client, rec } = connected({ random: () => 0.5 });
  factory.last.drop();
  assert.equal(factory.sockets.length, 1);
  client.reconnectNow();
  assert.equal(factory.sockets.length, 2, 'connects at once');
  assert.deepEqual(clock.pendingTimeouts(), [CONNECT_TIMEOUT_MS], 'the backoff timer was cleared; the new attempt has its deadline');
  client.stop();
  assert.equal(factory.last.closedWith.code, 1000);
  factory.last.drop();
  clock.advance(60_000);
  assert.equal(factory.sockets.length, 2);
  assert.equal(rec.of('connection').at(-1).state, 'stopped');
});

test('a silent connection is detected by ping and replaced', () => {
  const { clock, factory, client } = connected({ random: () => 0 });
  const first = factory.last;
  clock.advance(20_000);
  assert.equal(first.lastSent('ping').type, 'ping');
  first.deliver({ type: 'pong', req: first.lastSent('ping').req });
  clock.advance(20_000);
  assert.equal(client.state, 'open', 'answered pings keep it up');
  clock.advance(20_000); // the second ping got no answer
  assert.equal(client.state, 'down');
  assert.equal(first.closedWith.code, 4000);
  clock.advance(250);
  assert.equal(factory.sockets.length, 2);
  first.drop(); // late close event of the dead socket changes nothing
  assert.equal(client.state, 'connecting');
});

test('back in view, an open connection is pinged and replaced within seconds if it is silent', () => {
  const { clock, factory, client } = connected({ random: () => 0 });
  const first = factory.last;
  client.checkNow();
  const ping = first.lastSent('ping');
  assert.equal(ping.type, 'ping');
  client.checkNow();
  assert.equal(first.sent.filter((m) => m.type === 'ping').length, 1, 'one check at a time');
  first.deliver({ type: 'pong', req: ping.req });
  clock.advance(CHECK_TIMEOUT_MS);
  assert.equal(client.state, 'open', 'it answered');

  // Frames the browser held while the page slept are not an answer: only the pong is.
  client.checkNow();
  first.deliver({ type: 'telemetry', device: 'a', seq: 6, ts: 1, data: { t: 1 } });
  first.deliver({ type: 'pong', req: 'p-other' });
  clock.advance(CHECK_TIMEOUT_MS - 1);
  assert.equal(client.state, 'open');
  clock.advance(1);
  assert.equal(client.state, 'down', 'no pong: dead');
  assert.equal(first.closedWith.code, 4000);
  clock.advance(250);
  assert.equal(factory.sockets.length, 2, 'and replaced');

  factory.last.drop();
  const before = factory.sockets.length;
  client.checkNow();
  assert.equal(factory.sockets.length, before + 1, 'down: tries at once');
});

test('a check ends with its socket: the next connection is checked afresh', () => {
  const { clock, factory, client } = connected({ random: () => 0 });
  client.checkNow();
  factory.last.drop(); // gone before the pong
  clock.advance(250);
  const second = factory.last;
  second.accept();
  second.deliver(WELCOME);
  second.deliver({ type: 'snapshot', req: second.lastSent('subscribe').req, devices: [device('a', 5)], resume: 'tok2' });
  assert.equal(client.state, 'open');
  client.checkNow();
  assert.equal(second.lastSent('ping')?.type, 'ping', 'the new socket is pinged');
  clock.advance(CHECK_TIMEOUT_MS);
  assert.equal(client.state, 'down', 'and judged by its own answer');
});

test('a command goes pending, then final on the bridge status, echoing req', () => {
  const { client, socket, rec } = connected();
  const req = client.command('a', { on: true });
  const sent = socket.lastSent('command');
  assert.deepEqual(sent, { type: 'command', req, device: 'a', action: 'set', params: { on: true } });
  socket.deliver({ type: 'command_status', req, id: 'i-1', device: 'a', status: 'accepted' });
  socket.deliver({ type: 'command_status', req, id: 'i-1', device: 'a', status: 'sent' });
  socket.deliver({ type: 'command_status', req, id: 'i-1', device: 'a', status: 'ok', result: { on: true } });
  socket.deliver({ type: 'command_status', req, id: 'i-1', device: 'a', status: 'ok' }); // late duplicate
  const cmds = rec.of('command');
  assert.deepEqual(cmds.map((e) => [e.status, e.final]), [['pending', false], ['pending', false], ['pending', false], ['ok', true]]);
  assert.deepEqual(cmds.at(-1).result, { on: true });
  assert.deepEqual(cmds.at(-1).params, { on: true });
  assert.equal(client.pending.size, 0);
});

test('rejected, offline and error answers carry their reason', () => {
  const { client, socket, rec } = connected();
  const r1 = client.command('a', { level: 200 });
  socket.deliver({ type: 'command_status', req: r1, id: 'i-2', device: 'a', status: 'rejected', error: 'level must be between 0 and 100' });
  const r2 = client.command('a', { on: true });
  socket.deliver({ type: 'command_status', req: r2, id: 'i-3', device: 'a', status: 'offline' });
  const r3 = client.command('zzz', { on: true });
  socket.deliver({ type: 'error', req: r3, code: 'unknown_device', message: 'no device zzz' });
  const finals = rec.of('command').filter((e) => e.final);
  assert.deepEqual(finals.map((e) => [e.req, e.status, e.error]), [
    [r1, 'rejected', 'level must be between 0 and 100'],
    [r2, 'offline', undefined],
    [r3, 'error', 'no device zzz'],
  ]);
  assert.equal(rec.of('error').length, 0, 'errors for a command are not reported twice');
});

test('commands while disconnected answer offline at once; in-flight ones become lost on a drop', () => {
  const { client, factory, rec } = connected();
  const inflight = client.command('a', { on: true }, { timeoutMs: 2000 });
  assert.equal(factory.last.lastSent('command').timeout_ms, 2000);
  factory.last.drop();
  let finals = rec.of('command').filter((e) => e.final);
  assert.deepEqual(finals.map((e) => [e.req, e.status]), [[inflight, 'lost']]);
  client.command('a', { on: false });
  finals = rec.of('command').filter((e) => e.final);
  assert.equal(finals.at(-1).status, 'offline');
  assert.match(finals.at(-1).error, /not connected/);
});

test('a command the bridge never answers times out on the client after its grace', () => {
  const { client, clock, rec } = connected();
  const req = client.command('a', { on: true }, { timeoutMs: 1000 });
  clock.advance(1000 + COMMAND_GRACE_MS - 1);
  assert.equal(rec.of('command').filter((e) => e.final).length, 0);
  clock.advance(1);
  const last = rec.of('command').at(-1);
  assert.deepEqual([last.req, last.status, last.final], [req, 'timeout', true]);
});

test('history: asked when the bridge has it, never when its welcome or its answers say it has not', async () => {
  const { client, socket } = connected();
  assert.equal(client.supports('history'), true, 'iotbridge.v1 lists history');
  const answer = client.history('a', undefined, { limit: 60 });
  const sent = socket.lastSent('history');
  assert.deepEqual(sent, { type: 'history', req: sent.req, device: 'a', limit: 60 });
  socket.deliver({ type: 'history', req: sent.req, device: 'a', samples: [{ seq: 4, ts: 1, data: { power: 2 } }] });
  assert.deepEqual((await answer).samples[0].data, { power: 2 });

  // A bridge build from before the request existed: one refusal and the client stops asking.
  const refused = client.history('a', 'power');
  socket.deliver({ type: 'error', req: socket.lastSent('history').req, code: 'unknown_type', message: 'unknown type "history"' });
  await assert.rejects(refused, (e) => e.code === 'unknown_type');
  assert.equal(client.supports('history'), false);
  const count = socket.sent.filter((m) => m.type === 'history').length;
  await assert.rejects(client.history('a', 'power'), /no history/);
  assert.equal(socket.sent.filter((m) => m.type === 'history').length, count, 'nothing more was sent');

  // A welcome that lists its features is taken at its word.
  client.missing.clear();
  client.welcome = { ...WELCOME, features: ['something_else'] };
  assert.equal(client.supports('history'), false);
  client.welcome = { ...WELCOME, features: ['history'] };
  assert.equal(client.supports('history'), true);
});

test('a history request pending when the connection drops is rejected', async () => {
  const { client, socket } = connected();
  const answer = client.history('a');
  socket.drop();
  await assert.rejects(answer, /connection closed/);
});

test('with an epoch, resume names the last seq received per device; a recovered snapshot replays', () => {
  const { factory, rec, clock } = connected({ devices: [], random: () => 0 });
  const s1 = factory.last;
  s1.deliver({ type: 'snapshot', req: 'late', devices: [device('a', 5), device('b', 0)], epoch: 'ep1', resume: 'tok' });
  s1.deliver({ type: 'telemetry', device: 'a', seq: 6, ts: 2, data: { power: 1 } });
  s1.deliver({ type: 'telemetry', device: 'a', seq: 7, ts: 3, data: { power: 2 } });
  s1.drop();
  clock.advance(250);
  const s2 = factory.last;
  s2.accept();
  const sub = s2.lastSent('subscribe');
  assert.deepEqual(sub.since, { epoch: 'ep1', seqs: { a: 7, b: 0 } });
  s2.deliver({ type: 'snapshot', req: sub.req, devices: [{ ...device('a', 7), telemetry: undefined }, device('b', 0)], epoch: 'ep1', resume: 't2', recovered: true });
  s2.deliver({ type: 'telemetry', device: 'a', seq: 8, ts: 4, data: { power: 3 } });
  s2.deliver({ type: 'telemetry', device: 'a', seq: 9, ts: 5, data: { power: 4 } });
  assert.deepEqual(rec.of('telemetry').map((e) => e.seq), [6, 7, 8, 9], 'each reading once, in order');
  const snap = rec.of('snapshot').at(-1);
  assert.deepEqual([snap.resumed, snap.recovered, snap.epoch], [true, true, 'ep1']);
});

test('permissions, forbidden and rate-limited commands', () => {
  const { client, socket, rec } = connected();
  socket.deliver({ type: 'permissions', read: ['*'], control: ['light-*'] });
  assert.deepEqual(rec.of('permissions')[0].control, ['light-*']);
  const r1 = client.command('plug-1', { on: true });
  socket.deliver({ type: 'error', req: r1, code: 'forbidden', message: 'tester may not control plug-1' });
  const r2 = client.command('light-1', { on: true });
  socket.deliver({ type: 'command_status', req: r2, id: 'i-9', device: 'light-1', status: 'rate_limited' });
  const finals = rec.of('command').filter((e) => e.final);
  assert.deepEqual(finals.map((e) => [e.req, e.status]), [[r1, 'forbidden'], [r2, 'rate_limited']]);
  assert.equal(finals[0].error, 'tester may not control plug-1');
});

test('a listener that throws does not break the client', () => {
  const { client, socket, rec } = connected();
  const errors = [];
  const original = console.error;
  console.error = (...args) => errors.push(args);
  try {
    client.on('telemetry', () => { throw new Error('boom'); });
    socket.deliver({ type: 'telemetry', device: 'a', seq: 6, ts: 2, data: { power: 1 } });
  } finally {
    console.error = original;
  }
  assert.equal(rec.of('telemetry').length, 1);
  assert.equal(errors.length, 1);
});

test('a refused resume point falls back to a plain subscribe instead of staying unsubscribed', () => {
  const { factory, client, clock } = connected({ random: () => 0 });
  factory.last.drop();
  clock.advance(250);
  const s = factory.last;
  s.accept();
  const first = s.lastSent('subscribe');
  assert.equal(first.since, 'tok1');
  s.deliver({ type: 'error', req: first.req, code: 'bad_request', message: 'invalid subscribe: since' });
  const second = s.lastSent('subscribe');
  assert.notEqual(second.req, first.req);
  assert.equal('since' in second, false);
  s.deliver({ type: 'snapshot', req: second.req, devices: [], resume: 'tok2' });
  assert.equal(client.state, 'open');
});

test('a resume point larger than the bridge takes is forgotten: the next subscribe resyncs', () => {
  // Ids of 12 characters and their seqs: some 20 bytes a device, past 64 KiB at 4,000 devices.
  const fleet = Array.from({ length: 4000 }, (_, i) => device(`device-${String(i).padStart(5, '0')}`, 7));
  const { factory, client, clock } = connected({ devices: [], random: () => 0 });
  factory.last.deliver({ type: 'snapshot', req: 'late', devices: fleet, epoch: 'ep1', resume: 'tok' });
  factory.last.drop();
  clock.advance(250);
  const s = factory.last;
  s.accept();
  const sub = s.lastSent('subscribe');
  assert.equal('since' in sub, false, 'no point the bridge would close the connection over');
  assert.ok(JSON.stringify(sub).length <= WELCOME.limits.max_frame_bytes);
  s.deliver({ type: 'snapshot', req: sub.req, devices: fleet, epoch: 'ep1', resume: 'tok2' });
  assert.equal(client.state, 'open');

  // A small fleet's point still goes out.
  const small = connected({ devices: [], random: () => 0 });
  small.factory.last.deliver({ type: 'snapshot', req: 'late', devices: fleet.slice(0, 100), epoch: 'ep1', resume: 'tok' });
  small.factory.last.drop();
  small.clock.advance(250);
  small.factory.last.accept();
  assert.equal(small.factory.last.lastSent('subscribe').since.epoch, 'ep1');
});

test('a close for a message too big (1009) forgets the resume point, so the retry differs', () => {
  const { factory, clock } = connected({ devices: [device('a', 5)], random: () => 0 });
  factory.last.deliver({ type: 'snapshot', req: 'late', devices: [device('a', 5)], epoch: 'ep1', resume: 'tok' });
  factory.last.drop();
  clock.advance(250);
  factory.last.accept();
  assert.deepEqual(factory.last.lastSent('subscribe').since, { epoch: 'ep1', seqs: { a: 5 } });
  factory.last.drop(1009, 'message too big');
  clock.advance(500);
  factory.last.accept();
  assert.equal('since' in factory.last.lastSent('subscribe'), false);
});

test('an attempt that has not connected within the deadline is given up and retried', () => {
  const clock = new FakeClock();
  const factory = socketFactory();
  const client = new BridgeClient({ url: 'wss://bridge/ws', connect: factory.connect, clock, random: () => 0 });
  const rec = recorder(client);
  client.start();
  const hanging = factory.last;
  clock.advance(CONNECT_TIMEOUT_MS - 1);
  assert.equal(client.state, 'connecting');
  clock.advance(1);
  assert.equal(hanging.closedWith.code, 4000);
  assert.deepEqual([client.state, rec.of('connection').at(-1).reason], ['down', 'no connection within 10 s']);
  hanging.accept(); // too late: the client no longer listens to it
  assert.equal(hanging.sent.length, 0);
  clock.advance(250);
  assert.equal(factory.sockets.length, 2, 'retried after the backoff');

  // An attempt that opens in time is not cut, however long the snapshot then takes.
  clock.advance(CONNECT_TIMEOUT_MS - 1);
  factory.last.accept();
  clock.advance(CONNECT_TIMEOUT_MS);
  assert.equal(factory.last.closedWith, null);
  factory.last.deliver({ type: 'snapshot', req: factory.last.lastSent('subscribe').req, devices: [] });
  assert.equal(client.state, 'open');
});

test('Retry gives up an attempt under way for a new one at once, and skips a backoff wait', () => {
  const clock = new FakeClock();
  const factory = socketFactory();
  const client = new BridgeClient({ url: 'wss://bridge/ws', connect: factory.connect, clock, random: () => 0.5 });
  client.start();
  const hanging = factory.last;
  clock.advance(3000);
  client.retry();
  assert.equal(hanging.closedWith.code, 4000);
  assert.equal(factory.sockets.length, 2, 'a new attempt at once');
  assert.equal(client.state, 'connecting');
  assert.deepEqual(clock.pendingTimeouts(), [CONNECT_TIMEOUT_MS], 'only the new attempt\'s deadline is pending');

  factory.last.drop(1006);
  assert.equal(client.state, 'down');
  client.retry();
  assert.equal(factory.sockets.length, 3, 'no wait for the backoff');
  factory.last.accept();
  factory.last.deliver({ type: 'snapshot', req: factory.last.lastSent('subscribe').req, devices: [] });
  client.retry();
  assert.equal(factory.sockets.length, 3, 'an open connection is kept');
});
