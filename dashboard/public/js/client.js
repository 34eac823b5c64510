// The iotbridge.v1 protocol client: one WebSocket to the bridge, kept alive across drops.
//
// Pure module (no DOM): the socket comes from a factory and the timers from an injectable clock,
// so unit tests drive it with a fake socket and fake time. The page passes
// `(url, protocols) => new WebSocket(url, protocols)`.
//
// What it does for the page:
// - subscribes on every (re)connect with `since`: the bridge's epoch and the last telemetry seq
//   it delivered per device (or, from a bridge that sends no epoch, its last `resume` token), so
//   a short drop is replayed without gaps; a point too big for the bridge's frame limit (thousands
//   of devices) is forgotten for a fresh snapshot rather than refused on every retry;
// - drops telemetry it has already seen (per-device `seq`), so nothing is shown twice;
// - reconnects by itself with exponential backoff and jitter, gives up an attempt that has not
//   connected within 10 s, and notices a dead connection with an application-level `ping`
//   (browsers cannot send WebSocket pings);
// - tracks each command from `pending` to a final status, including the cases where no answer
//   can come (socket closed, bridge silent).

export const SUBPROTOCOL = 'iotbridge.v1.json';

/** Command statuses after which nothing more is said about a command. */
export const FINAL_STATUSES = new Set(['ok', 'rejected', 'timeout', 'offline', 'forbidden', 'rate_limited', 'error', 'lost']);
/** `error` codes that answer a command with a status of the same name rather than a generic error. */
const COMMAND_ERROR_STATUSES = new Set(['forbidden', 'rate_limited']);

export const DEFAULT_BACKOFF = Object.freeze({ initialMs: 500, maxMs: 15000, factor: 2 });
export const DEFAULT_HEARTBEAT = Object.freeze({ intervalMs: 20000 });
/**
 * How long opening the WebSocket (TCP, TLS, upgrade) may take. A browser waits minutes on a
 * network that drops packets; this gives such an attempt up and retries.
 */
export const CONNECT_TIMEOUT_MS = 10000;
/**
 * How long an open socket has to answer the ping of `checkNow` (the page back in view, the
 * network back): a phone that slept may hold a socket that died without a word.
 */
export const CHECK_TIMEOUT_MS = 5000;
/** Extra time the client waits past a command's own timeout before it gives up on the bridge. */
export const COMMAND_GRACE_MS = 5000;
export const DEFAULT_COMMAND_TIMEOUT_MS = 10000;

/**
 * Delay before reconnect attempt number `attempt` (0-based): exponential, capped, with "equal
 * jitter" (half fixed, half random) so a bridge restart is not met by every page at once, yet
 * no page retries in a tight loop.
 */
export function backoffDelay(attempt, policy = DEFAULT_BACKOFF, random = Math.random) {
  const base = Math.min(policy.maxMs, policy.initialMs * policy.factor ** Math.max(0, attempt));
  return Math.round(base / 2 + random() * (base / 2));
}

/** The real clock; tests pass their own object with the same members. */
export const systemClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (id) => globalThis.clearTimeout(id),
  setInterval: (fn, ms) => globalThis.setInterval(fn, ms),
  clearInterval: (id) => globalThis.clearInterval(id),
};

// WebSocket readyState values; named here because a fake socket may not define the constants.
const OPEN = 1;
/** Optional requests that docs/protocol.md lists for iotbridge.v1. */
const V1_REQUESTS = new Set(['history']);

export class BridgeClient {
  /**
   * @param {object} options
   * @param {string} options.url             wss://host:port/ws
   * @param {(url: string, protocols: string[]) => object} options.connect  WebSocket factory
   * @param {string[]} [options.patterns]    device ids or globs to subscribe to
   * @param {object} [options.clock]         {now, setTimeout, clearTimeout, setInterval, clearInterval}
   * @param {() => number} [options.random]  jitter source in [0, 1)
   * @param {object} [options.backoff]       {initialMs, maxMs, factor}
   * @param {object} [options.heartbeat]     {intervalMs}
   */
  constructor({ url, connect, patterns = ['*'], clock = systemClock, random = Math.random, backoff = DEFAULT_BACKOFF, heartbeat = DEFAULT_HEARTBEAT }) {
    if (typeof connect !== 'function') throw new TypeError('connect must be a WebSocket factory');
    this.url = url;
    this.patterns = [...patterns];
    this.clock = clock;
    this.random = random;
    this.backoffPolicy = backoff;
    this.heartbeatPolicy = heartbeat;
    this.connectFn = connect;

    this.listeners = new Map();
    this.socket = null;
    /** 'idle' | 'connecting' | 'open' | 'down' | 'stopped' */
    this.state = 'idle';
    this.attempt = 0;
    this.retryTimer = null;
    this.retryAt = null;
    this.connectTimer = null;
    this.heartbeatTimer = null;
    this.awaitingPong = false;
    /** The check of `checkNow` under way, `{req, timer}`; it ends with its socket. */
    this.check = null;
    this.nextReq = 1;

    this.welcome = null;
    this.epoch = null;
    this.resumeToken = null;
    /** Optional features an older bridge turned out not to have (it answered `unknown_type`). */
    this.missing = new Set();
    this.subscribeReq = null;
    this.sentSince = null;
    /** Last telemetry seq seen per device; anything at or below it is a repeat. */
    this.lastSeq = new Map();
    /** req -> {device, action, params, timer} for commands without a final status yet. */
    this.pending = new Map();
    /** req -> {resolve, reject} for history requests. */
    this.historyWaiters = new Map();
  }

  /** Registers `fn` for events of `type` ('*' for all); returns a function that unregisters it. */
  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type)?.delete(fn);
  }

  emit(type, payload) {
    for (const key of [type, '*']) {
      for (const fn of this.listeners.get(key) ?? []) {
        try {
          fn(payload, type);
        } catch (e) {
          // One faulty listener must not break the protocol state machine.
          globalThis.console?.error?.('listener failed', e);
        }
      }
    }
  }

  start() {
    if (this.state === 'idle' || this.state === 'stopped') {
      this.state = 'idle';
      this.open();
    }
  }

  stop() {
    this.state = 'stopped';
    this.clearRetry();
    this.clearConnectTimer();
    this.stopHeartbeat();
    this.dropSocket(1000, 'page closed');
    this.failPending('lost', 'the dashboard stopped before the device answered');
    this.emit('connection', { state: 'stopped' });
  }

  /** Skips the remaining backoff wait (e.g. the browser came back online or the tab was shown). */
  reconnectNow() {
    if (this.state !== 'down') return;
    this.clearRetry();
    this.open();
  }

  /**
   * The page is back in view or the network is back. A connection that is down tries at once;
   * one that looks open is pinged and replaced if nothing arrives within CHECK_TIMEOUT_MS, so
   * a phone woken from sleep does not show stale readings as live until the next heartbeat.
   */
  checkNow() {
    if (this.state === 'down') {
      this.reconnectNow();
      return;
    }
    if (this.state !== 'open' || this.check !== null) return;
    // Only the pong to this ping counts: frames the browser held while the page slept may
    // still arrive from a socket that died meanwhile.
    const req = this.req('p');
    if (!this.send({ type: 'ping', req })) return;
    const timer = this.clock.setTimeout(() => {
      this.check = null;
      this.abandon('no answer to ping');
    }, CHECK_TIMEOUT_MS);
    this.check = { req, timer };
  }

  /** Ends the check of `checkNow` (answered, or its socket is gone). */
  endCheck() {
    if (this.check === null) return;
    this.clock.clearTimeout(this.check.timer);
    this.check = null;
  }

  /** The person asked to retry: as `reconnectNow`, and an attempt under way is given up for a new one. */
  retry() {
    if (this.state === 'connecting') this.abandon('given up for a new attempt');
    this.reconnectNow();
  }

  /**
   * Whether the bridge has an optional request (`history`). A welcome that lists `features` is
   * authoritative; otherwise iotbridge.v1 includes it, unless this bridge already answered it
   * with `unknown_type` (a build from before the request existed).
   */
  supports(feature) {
    if (!this.welcome || this.missing.has(feature)) return false;
    const features = this.welcome.features;
    if (Array.isArray(features)) return features.includes(feature);
    return this.welcome.protocol === 'iotbridge.v1' && V1_REQUESTS.has(feature);
  }

  /** The `since` of a resubscribe: what this page actually received, else the last token. */
  resumePoint() {
    if (this.epoch !== null) return { epoch: this.epoch, seqs: Object.fromEntries(this.lastSeq) };
    return this.resumeToken;
  }

  get connected() {
    return this.state === 'open';
  }

  open() {
    this.state = 'connecting';
    this.emit('connection', { state: 'connecting', attempt: this.attempt });
    let socket;
    try {
      socket = this.connectFn(this.url, [SUBPROTOCOL]);
    } catch (e) {
      // Bad URL or a browser refusing outright: treat like a failed connection and retry.
      this.onSocketClosed(null, 1006, String(e?.message ?? e));
      return;
    }
    this.socket = socket;
    this.connectTimer = this.clock.setTimeout(() => {
      this.connectTimer = null;
      this.abandon(`no connection within ${CONNECT_TIMEOUT_MS / 1000} s`);
    }, CONNECT_TIMEOUT_MS);
    socket.onopen = () => this.onSocketOpen(socket);
    socket.onmessage = (event) => this.onSocketMessage(socket, event.data);
    socket.onclose = (event) => this.onSocketClosed(socket, event?.code ?? 1006, event?.reason ?? '');
    // An error is always followed by a close event, which does the work.
    socket.onerror = () => {};
  }

  onSocketOpen(socket) {
    if (socket !== this.socket) return;
    this.clearConnectTimer();
    this.subscribeReq = this.req('s');
    const msg = { type: 'subscribe', req: this.subscribeReq, devices: this.patterns };
    const since = this.resumePoint();
    if (since !== null) msg.since = since;
    if (since !== null && !this.fits(msg)) {
      // A large fleet's point outgrows the bridge's frame limit: the bridge would close with 1009
      // on this and every later attempt. A fresh snapshot instead.
      this.forgetResumePoint();
      delete msg.since;
    }
    this.sentSince = msg.since ?? null;
    this.send(msg);
    this.startHeartbeat();
  }

  /** Whether `msg` is within the frame limit of the bridge's latest welcome (no welcome yet: it fits). */
  fits(msg) {
    const limit = this.welcome?.limits?.max_frame_bytes;
    return typeof limit !== 'number' || new TextEncoder().encode(JSON.stringify(msg)).length <= limit;
  }

  /** The next subscribe asks for a fresh snapshot instead of resuming. */
  forgetResumePoint() {
    this.epoch = null;
    this.resumeToken = null;
  }

  onSocketMessage(socket, data) {
    if (socket !== this.socket) return;
    this.awaitingPong = false;
    let msg;
    try {
      msg = JSON.parse(typeof data === 'string' ? data : String(data));
    } catch {
      this.emit('protocol_error', { message: 'the bridge sent a frame that is not JSON' });
      return;
    }
    if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') {
      this.emit('protocol_error', { message: 'the bridge sent a message without a type' });
      return;
    }
    this.handle(msg);
  }

  handle(msg) {
    switch (msg.type) {
      case 'welcome':
        this.welcome = msg;
        this.emit('welcome', msg);
        if (msg.broker) this.emit('broker', { status: msg.broker });
        break;
      case 'snapshot':
        this.onSnapshot(msg);
        break;
      case 'telemetry': {
        const last = this.lastSeq.get(msg.device);
        if (typeof msg.seq === 'number') {
          if (last !== undefined && msg.seq <= last) return;
          this.lastSeq.set(msg.device, msg.seq);
        }
        this.emit('telemetry', msg);
        break;
      }
      case 'device':
        if (msg.removed) this.lastSeq.delete(msg.device);
        this.emit('device', msg);
        break;
      case 'state':
      case 'presence':
      case 'permissions':
      case 'broker':
      case 'lagging':
      case 'unsubscribed':
      case 'list':
        this.emit(msg.type, msg);
        break;
      case 'pong':
        if (this.check !== null && msg.req === this.check.req) this.endCheck();
        break;
      case 'command_status':
        this.onCommandStatus(msg);
        break;
      case 'history':
        this.onHistory(msg);
        break;
      case 'error':
        this.onError(msg);
        break;
      default:
        // Newer bridges may add message types; an old page ignores them rather than failing.
        this.emit('unknown', msg);
    }
  }

  onSnapshot(msg) {
    const ours = msg.req === undefined || msg.req === this.subscribeReq;
    if (typeof msg.resume === 'string') this.resumeToken = msg.resume;
    if (typeof msg.epoch === 'string') this.epoch = msg.epoch;
    const devices = Array.isArray(msg.devices) ? msg.devices : [];
    // A replayed resume keeps the seqs we hold; anything else restarts the count from the snapshot.
    if (msg.recovered !== true) this.lastSeq.clear();
    for (const d of devices) {
      if (typeof d.seq === 'number') this.lastSeq.set(d.id, d.seq);
    }
    if (ours && this.state === 'connecting') {
      this.state = 'open';
      this.attempt = 0;
      this.emit('connection', { state: 'open' });
    }
    this.emit('snapshot', {
      devices,
      epoch: typeof msg.epoch === 'string' ? msg.epoch : null,
      resume: msg.resume,
      recovered: msg.recovered ?? null,
      resumed: ours && this.sentSince !== null,
    });
  }

  onSocketClosed(socket, code, reason) {
    if (socket !== null && socket !== this.socket) return;
    this.socket = null;
    this.clearConnectTimer();
    this.stopHeartbeat();
    this.endCheck();
    this.failPending('lost', 'the connection to the bridge closed before the device answered; the control shows the reported state');
    for (const [, waiter] of this.historyWaiters) waiter.reject(new Error('connection closed'));
    this.historyWaiters.clear();
    if (this.state === 'stopped') return;
    // Something we sent was too big, most likely the resume point (measured against an older
    // welcome's limit, or by a bridge behind a proxy with a smaller one): retry without it.
    if (code === 1009) this.forgetResumePoint();
    const delay = backoffDelay(this.attempt, this.backoffPolicy, this.random);
    this.attempt += 1;
    this.state = 'down';
    this.retryAt = this.clock.now() + delay;
    this.retryTimer = this.clock.setTimeout(() => {
      this.retryTimer = null;
      this.open();
    }, delay);
    this.emit('connection', { state: 'down', code, reason, retryInMs: delay, retryAt: this.retryAt, attempt: this.attempt });
  }

  clearRetry() {
    if (this.retryTimer !== null) this.clock.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.retryAt = null;
  }

  clearConnectTimer() {
    if (this.connectTimer !== null) this.clock.clearTimeout(this.connectTimer);
    this.connectTimer = null;
  }

  /** Gives up on the current socket as if it had closed: the usual retry follows. */
  abandon(reason) {
    this.dropSocket(4000, reason);
    this.onSocketClosed(null, 4000, reason);
  }

  /** Closes the current socket and forgets it, so its late events are ignored. */
  dropSocket(code, reason) {
    const socket = this.socket;
    this.socket = null;
    this.endCheck();
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    try {
      socket.close(code, reason);
    } catch {
      // Closing a socket that never opened can throw in some browsers; it is gone either way.
    }
  }

  startHeartbeat() {
    this.stopHeartbeat();
    this.awaitingPong = false;
    this.heartbeatTimer = this.clock.setInterval(() => this.heartbeat(), this.heartbeatPolicy.intervalMs);
  }

  stopHeartbeat() {
    if (this.heartbeatTimer !== null) this.clock.clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
  }

  /** Nothing heard for a whole interval after a ping: the connection is dead even if TCP has not noticed. */
  heartbeat() {
    if (this.awaitingPong) {
      this.abandon('no answer to ping');
      return;
    }
    this.awaitingPong = true;
    this.send({ type: 'ping', req: this.req('p') });
  }

  req(prefix) {
    return `${prefix}${this.nextReq++}`;
  }

  send(msg) {
    if (!this.socket || this.socket.readyState !== OPEN) return false;
    try {
      this.socket.send(JSON.stringify(msg));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Sends a command and returns its `req`. Progress arrives as `command` events
   * `{req, device, action, params, status, final, error?, result?}`; the first one is `pending`
   * (emitted synchronously, before this returns).
   */
  command(device, params, { action = 'set', timeoutMs } = {}) {
    const req = this.req('c');
    const base = { req, device, action, params };
    this.emit('command', { ...base, status: 'pending', final: false });
    if (this.state !== 'open') {
      this.emit('command', { ...base, status: 'offline', final: true, error: 'not connected to the bridge' });
      return req;
    }
    const msg = { type: 'command', req, device, action, params };
    if (timeoutMs !== undefined) msg.timeout_ms = timeoutMs;
    const guard = (timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS) + COMMAND_GRACE_MS;
    const timer = this.clock.setTimeout(() => {
      this.finish(req, { status: 'timeout', error: 'no answer from the bridge' });
    }, guard);
    this.pending.set(req, { ...base, timer });
    if (!this.send(msg)) {
      this.finish(req, { status: 'offline', error: 'not connected to the bridge' });
    }
    return req;
  }

  onCommandStatus(msg) {
    const entry = this.pending.get(msg.req);
    if (!entry) return;
    const status = msg.status === 'accepted' || msg.status === 'sent' ? 'pending' : msg.status;
    if (!FINAL_STATUSES.has(status)) {
      this.emit('command', { req: entry.req, device: entry.device, action: entry.action, params: entry.params, status, stage: msg.status, id: msg.id, final: false });
      return;
    }
    this.finish(msg.req, { status, id: msg.id, error: msg.error, result: msg.result });
  }

  finish(req, outcome) {
    const entry = this.pending.get(req);
    if (!entry) return;
    this.pending.delete(req);
    this.clock.clearTimeout(entry.timer);
    const { timer: _timer, ...base } = entry;
    this.emit('command', { ...base, ...outcome, final: true });
  }

  failPending(status, error) {
    for (const req of [...this.pending.keys()]) this.finish(req, { status, error });
  }

  onError(msg) {
    if (msg.req !== undefined && msg.req === this.subscribeReq && this.sentSince !== null) {
      // The bridge would not resume from our point (an older or newer format): start afresh
      // rather than stay without a subscription.
      this.subscribeReq = this.req('s');
      this.sentSince = null;
      this.send({ type: 'subscribe', req: this.subscribeReq, devices: this.patterns });
      return;
    }
    if (msg.req !== undefined && this.pending.has(msg.req)) {
      const status = COMMAND_ERROR_STATUSES.has(msg.code) ? msg.code : 'error';
      this.finish(msg.req, { status, error: msg.message ?? msg.code });
      return;
    }
    const waiter = msg.req !== undefined ? this.historyWaiters.get(msg.req) : undefined;
    if (waiter) {
      this.historyWaiters.delete(msg.req);
      if (msg.code === 'unknown_type') this.missing.add('history');
      const error = new Error(msg.message ?? msg.code);
      error.code = msg.code;
      waiter.reject(error);
      return;
    }
    this.emit('error', msg);
  }

  /**
   * Asks for a device's recent telemetry (one field, or all when `field` is undefined); resolves
   * with the `history` message `{device, field, samples: [{seq, ts, data}]}`, oldest first.
   */
  history(device, field, { from, to, limit } = {}) {
    if (!this.supports('history')) return Promise.reject(new Error('this bridge has no history'));
    const req = this.req('h');
    const msg = { type: 'history', req, device };
    if (field !== undefined) msg.field = field;
    if (from !== undefined) msg.from = from;
    if (to !== undefined) msg.to = to;
    if (limit !== undefined) msg.limit = limit;
    return new Promise((resolve, reject) => {
      this.historyWaiters.set(req, { resolve, reject });
      if (!this.send(msg)) {
        this.historyWaiters.delete(req);
        reject(new Error('not connected to the bridge'));
      }
    });
  }

  onHistory(msg) {
    const waiter = this.historyWaiters.get(msg.req);
    if (!waiter) return;
    this.historyWaiters.delete(msg.req);
    waiter.resolve(msg);
  }
}
