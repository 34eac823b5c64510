// What the page knows about every device, built only from what the bridge said. Pure, no DOM.
//
// The store applies protocol messages, keeps a short series per numeric telemetry field for the
// sparklines (points carry the telemetry `seq`, so history and live values merge without
// repeats), remembers the latest command per control, and decides how a device should be shown
// (online, offline, stale, unknown) from its presence, the age of its data and the health of the
// two links in between (page <-> bridge, bridge <-> broker).

import { isNumericType } from './format.js';
import { globMatch } from './finder.js';

export const SERIES_LENGTH = 60;
/** Data older than this is never called fresh, whatever the device's usual pace. */
export const MIN_STALE_MS = 15000;
/** A device that misses this many of its usual intervals is stale. */
export const STALE_INTERVALS = 4;
const INTERVAL_SAMPLES = 8;
/** Reading times kept per device to learn its pace: INTERVAL_SAMPLES intervals between them. */
const PACE_TIMES = INTERVAL_SAMPLES + 1;

export class DeviceStore {
  constructor({ seriesLength = SERIES_LENGTH, now = () => Date.now() } = {}) {
    this.seriesLength = seriesLength;
    this.now = now;
    this.devices = new Map();
    /** The bridge epoch the charted seqs belong to (null: unknown). */
    this.epoch = null;
    /** 'connecting' | 'open' | 'down' | 'stopped': the page's own link to the bridge. */
    this.connection = 'connecting';
    /** 'up' | 'down' | 'unknown': the bridge's link to the broker. */
    this.broker = 'unknown';
    /** `{read, control}` glob lists from the bridge; null until the welcome says. */
    this.permissions = null;
    this.listeners = new Set();
  }

  /** `fn(ids)` after each change; `ids` is a Set of changed devices, or null when all may have changed. */
  onChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  changed(ids) {
    for (const fn of this.listeners) fn(ids);
  }

  record(id) {
    let d = this.devices.get(id);
    if (!d) {
      d = {
        id, meta: null, presence: 'unknown', state: {}, telemetry: {}, telemetryTs: null,
        receivedAt: null, times: [], series: new Map(), seriesVersion: 0,
        commands: new Map(),
      };
      this.devices.set(id, d);
    }
    return d;
  }

  /**
   * A snapshot describes every subscribed device, recovered or not, so it replaces what we had:
   * a device the bridge no longer reports is gone (removed while we were away: a resume replays
   * telemetry, not removals). Sparkline series survive for devices that are still there, so a
   * reconnect does not blank the charts.
   */
  applySnapshot({ devices, recovered, epoch = null }) {
    // Seqs count per bridge epoch. In the same epoch the charted points keep theirs, so a fresh
    // snapshot and the history after it join them without repeats. A new epoch (a restarted
    // bridge counting from 1 again; or no epoch, so no telling) renumbers them in their order
    // below any seq the new stream can have.
    if (recovered !== true && (epoch === null || epoch !== this.epoch)) {
      for (const d of this.devices.values()) {
        for (const points of d.series.values()) points.forEach((p, i) => { p.seq = i - points.length; });
      }
    }
    this.epoch = epoch;
    const seen = new Set();
    for (const view of devices) {
      if (typeof view?.id !== 'string') continue;
      seen.add(view.id);
      const d = this.record(view.id);
      d.meta = view.meta ?? d.meta;
      d.presence = view.presence ?? 'unknown';
      d.state = { ...(view.state ?? {}) };
      if (view.telemetry) {
        // The same reading we already hold (nothing new while we were away) is not charted twice.
        if (view.ts !== d.telemetryTs) this.pushSeries(d, view.telemetry, view.seq);
        d.telemetry = { ...view.telemetry };
        d.telemetryTs = view.ts ?? d.telemetryTs;
        if (typeof view.ts === 'number') notePace(d, view.ts);
        // The bridge's timestamp, not ours: a reconnect must not make old data look new.
        d.receivedAt = typeof view.ts === 'number' ? Math.min(view.ts, this.now()) : d.receivedAt;
      }
    }
    this.forget((id) => !seen.has(id));
    this.changed(null);
  }

  applyTelemetry({ device, seq, ts, data }) {
    if (!data || typeof data !== 'object') return;
    const d = this.record(device);
    const now = this.now();
    notePace(d, typeof ts === 'number' ? ts : now);
    Object.assign(d.telemetry, data);
    d.telemetryTs = ts ?? now;
    d.receivedAt = now;
    // Telemetry proves the device is talking, unless the bridge says its broker link is down.
    if (d.presence === 'unknown') d.presence = 'online';
    this.pushSeries(d, data, seq);
    this.changed(new Set([device]));
  }

  /** Adds one reading per numeric field; a seq already charted is not charted twice. */
  pushSeries(d, data, seq) {
    d.seriesVersion += 1;
    for (const [field, value] of Object.entries(data)) {
      if (typeof value !== 'number' || !Number.isFinite(value)) continue;
      const type = d.meta?.telemetry?.[field]?.type;
      if (type && !isNumericType(type)) continue;
      let points = d.series.get(field);
      if (!points) d.series.set(field, (points = []));
      const last = points.at(-1);
      if (typeof seq === 'number' && last && seq <= last.seq) {
        if (!points.some((p) => p.seq === seq)) this.mergePoints(points, [{ seq, v: value }]);
        continue;
      }
      points.push({ seq: typeof seq === 'number' ? seq : (last?.seq ?? 0) + 1e-6, v: value });
      if (points.length > this.seriesLength) points.splice(0, points.length - this.seriesLength);
    }
  }

  mergePoints(points, extra) {
    const bySeq = new Map(points.map((p) => [p.seq, p]));
    for (const p of extra) if (!bySeq.has(p.seq)) bySeq.set(p.seq, p);
    const merged = [...bySeq.values()].sort((a, b) => a.seq - b.seq).slice(-this.seriesLength);
    points.splice(0, points.length, ...merged);
  }

  /** The values to chart for one field, oldest first. */
  seriesValues(d, field) {
    return (d.series.get(field) ?? []).map((p) => p.v);
  }

  /** Stored samples from the bridge's `history` (`[{seq, ts, data}]`) join the live points by seq. */
  fillSeries(device, samples) {
    const d = this.devices.get(device);
    if (!d || !Array.isArray(samples)) return;
    const perField = new Map();
    for (const sample of samples) {
      if (typeof sample?.seq !== 'number' || !sample.data || typeof sample.data !== 'object') continue;
      for (const [field, v] of Object.entries(sample.data)) {
        if (typeof v !== 'number' || !Number.isFinite(v)) continue;
        const type = d.meta?.telemetry?.[field]?.type;
        if (type && !isNumericType(type)) continue;
        if (!perField.has(field)) perField.set(field, []);
        perField.get(field).push({ seq: sample.seq, v });
      }
    }
    for (const [field, points] of perField) {
      if (!d.series.has(field)) d.series.set(field, []);
      this.mergePoints(d.series.get(field), points);
    }
    d.seriesVersion += 1;
    this.changed(new Set([device]));
  }

  applyState({ device, state }) {
    if (!state || typeof state !== 'object') return;
    const d = this.record(device);
    d.state = { ...d.state, ...state };
    this.changed(new Set([device]));
  }

  applyPresence({ device, presence }) {
    const d = this.record(device);
    d.presence = presence;
    this.changed(new Set([device]));
  }

  applyDevice({ device, meta, removed }) {
    if (removed) {
      // No device to render: the page only drops its card.
      if (this.devices.delete(device)) this.changed(new Set());
      return;
    }
    const d = this.record(device);
    d.meta = meta ?? null;
    this.changed(new Set([device]));
  }

  /** Command progress from the client; every param it sets shows the command's status. */
  applyCommand(evt) {
    const d = this.record(evt.device);
    const at = this.now();
    for (const [name, target] of Object.entries(evt.params ?? {})) {
      const current = d.commands.get(name);
      // A newer command on the same control wins; late news of an older one is ignored.
      if (evt.status === 'pending' && (!current || current.req !== evt.req)) {
        d.commands.set(name, { req: evt.req, status: 'pending', stage: evt.stage, final: false, target, at });
      } else if (current?.req === evt.req) {
        d.commands.set(name, { ...current, status: evt.status, stage: evt.stage, final: evt.final, error: evt.error, at });
      }
    }
    this.changed(new Set([evt.device]));
  }

  /** What this identity may do (welcome, or `permissions` after an ACL reload): a device it may no longer read is gone. */
  setPermissions(permissions) {
    this.permissions = permissions && typeof permissions === 'object' ? permissions : null;
    const read = this.permissions?.read;
    if (Array.isArray(read)) this.forget((id) => !read.some((pattern) => globMatch(pattern, id)));
    this.changed(null);
  }

  /** Drops every device `gone(id)` says is gone. */
  forget(gone) {
    for (const id of [...this.devices.keys()]) if (gone(id)) this.devices.delete(id);
  }

  /** Whether this identity may send commands to the device (true until the bridge says otherwise). */
  canControl(id) {
    const control = this.permissions?.control;
    if (!Array.isArray(control)) return true;
    return control.some((pattern) => globMatch(pattern, id));
  }

  setBroker(status) {
    if (this.broker === status) return;
    this.broker = status;
    this.changed(null);
  }

  setConnection(state) {
    if (this.connection === state) return;
    this.connection = state;
    this.changed(null);
  }

  /** How long without data before this device counts as stale, from its own recent pace. */
  staleAfter(d) {
    const intervals = d.times.slice(1).map((t, i) => t - d.times[i]);
    if (intervals.length < 2) return MIN_STALE_MS;
    intervals.sort((a, b) => a - b);
    const median = intervals[Math.floor(intervals.length / 2)];
    return Math.max(MIN_STALE_MS, median * STALE_INTERVALS);
  }

  /**
   * How to show a device: `{status, reason}` with status online | offline | stale | unknown.
   * Stale means "this is the last known value and we cannot vouch for it now".
   */
  condition(d, now = this.now()) {
    if (this.connection !== 'open') {
      return { status: 'stale', reason: 'No connection to the bridge; showing the last known values.' };
    }
    if (d.presence === 'stale' || this.broker === 'down') {
      return { status: 'stale', reason: 'The bridge has lost its broker link; showing the last known values.' };
    }
    if (d.presence === 'offline') return { status: 'offline', reason: 'The device reported itself offline.' };
    const hasTelemetry = d.meta?.telemetry ? Object.keys(d.meta.telemetry).length > 0 : d.receivedAt !== null;
    if (d.presence === 'online' && hasTelemetry && d.receivedAt !== null && now - d.receivedAt > this.staleAfter(d)) {
      return { status: 'stale', reason: 'The device is online but has sent no data for a while.' };
    }
    if (d.presence === 'online') return { status: 'online', reason: '' };
    return { status: 'unknown', reason: 'The bridge has not heard this device’s status yet.' };
  }

  /** Devices sorted by name, then id. */
  list() {
    return [...this.devices.values()].sort((a, b) => sortKey(a).localeCompare(sortKey(b)) || a.id.localeCompare(b.id));
  }
}

/**
 * Keeps the times of a device's latest readings, in order, to learn its pace from. They are
 * the telemetry's own times (the device's clock, or the bridge's when it sent none), so
 * readings that arrive bunched (missed ones replayed after a reconnect) or out of order do not
 * make a device look faster or slower than it reports.
 */
function notePace(d, t) {
  let i = d.times.length;
  while (i > 0 && d.times[i - 1] > t) i -= 1;
  if (d.times[i - 1] === t) return;
  d.times.splice(i, 0, t);
  if (d.times.length > PACE_TIMES) d.times.shift();
}

function sortKey(d) {
  return String(d.meta?.name ?? d.id).toLowerCase();
}
