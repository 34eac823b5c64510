// Test doubles for the protocol client: a manual clock and a scriptable WebSocket.

/** A clock whose time only moves when the test says so; timers fire in due order. */
export class FakeClock {
  constructor(start = 1_000_000) {
    this.time = start;
    this.timers = new Map();
    this.nextId = 1;
  }

  now() {
    return this.time;
  }

  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { fn, at: this.time + ms, every: null });
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  setInterval(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { fn, at: this.time + ms, every: ms });
    return id;
  }

  clearInterval(id) {
    this.timers.delete(id);
  }

  /** Moves time forward by `ms`, running every timer that comes due on the way. */
  advance(ms) {
    const end = this.time + ms;
    for (;;) {
      let next = null;
      for (const [id, t] of this.timers) {
        if (t.at <= end && (next === null || t.at < next[1].at)) next = [id, t];
      }
      if (next === null) break;
      const [id, t] = next;
      this.time = t.at;
      if (t.every === null) this.timers.delete(id);
      else t.at += t.every;
      t.fn();
    }
    this.time = end;
  }

  pendingTimeouts() {
    return [...this.timers.values()].filter((t) => t.every === null).map((t) => t.at - this.time);
  }
}

/** A WebSocket stand-in: records what the client sends and lets the test play the bridge. */
export class FakeSocket {
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
  }

  /** The server accepted the connection. */
  accept() {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** The server sends one message (an object, encoded as JSON text). */
  deliver(msg) {
    this.onmessage?.({ data: typeof msg === 'string' ? msg : JSON.stringify(msg) });
  }

  /** The connection ends from the far side (or never opened). */
  drop(code = 1006, reason = '') {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code, reason });
  }

  send(text) {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.sent.push(JSON.parse(text));
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  lastSent(type) {
    return [...this.sent].reverse().find((m) => m.type === type);
  }
}

/** A factory that records every socket the client asks for. */
export function socketFactory() {
  const sockets = [];
  const connect = (url, protocols) => {
    const s = new FakeSocket(url, protocols);
    sockets.push(s);
    return s;
  };
  return { sockets, connect, get last() { return sockets[sockets.length - 1]; } };
}

/** Collects every event a client emits, by type. */
export function recorder(client) {
  const events = [];
  client.on('*', (payload, type) => events.push({ ...payload, type }));
  return {
    events,
    of: (type) => events.filter((e) => e.type === type),
  };
}
