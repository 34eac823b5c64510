// One device card, built from the device's `meta` alone and updated in place on every change, so
// focus and a half-moved slider survive the live stream.

import { createControl, setAttr, setProp } from './controls.js';
import { formatValue, humanize, isNumericType, relativeTime } from './format.js';
import { kindIcon } from './icons.js';
import { createSparkline, updateSparkline } from './sparkline.js';

export const CONDITION_LABELS = { online: 'Online', offline: 'Offline', stale: 'Stale', unknown: 'Unknown' };

function el(doc, tag, attrs = {}, text) {
  const node = doc.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Cards are rebuilt only when this changes (a device that changed its meta). */
export function metaSignature(meta) {
  return JSON.stringify(meta ?? null);
}

/** Telemetry fields in meta order, then any the device sends that its meta does not describe. */
export function telemetryFields(device) {
  const described = Object.keys(device.meta?.telemetry ?? {});
  const extra = Object.keys(device.telemetry ?? {}).filter((f) => !described.includes(f)).sort();
  return [...described, ...extra];
}

/** Switches first (the usual main action), then choices, then numbers, then anything else. */
const CONTROL_ORDER = { bool: 0, enum: 1, int: 2, float: 2 };

export function orderedControls(controls) {
  const entries = Object.entries(controls && typeof controls === 'object' ? controls : {});
  const rank = ([, spec]) => CONTROL_ORDER[spec?.type] ?? 3;
  // Array.prototype.sort is stable: within a rank, meta order stays.
  return entries.sort((a, b) => rank(a) - rank(b));
}

export class DeviceCard {
  constructor(doc, device, { send, seriesLength }) {
    this.doc = doc;
    this.id = device.id;
    this.send = send;
    this.seriesLength = seriesLength;
    this.signature = metaSignature(device.meta);
    this.metrics = new Map();
    this.controls = new Map();
    this.build(device);
  }

  build(device) {
    const doc = this.doc;
    const meta = device.meta ?? {};
    const name = typeof meta.name === 'string' && meta.name ? meta.name : device.id;
    const titleId = `dev-${device.id}-title`;
    this.el = el(doc, 'article', { class: 'card', 'data-device': device.id, 'aria-labelledby': titleId });

    const head = el(doc, 'header', { class: 'card-head' });
    const icon = el(doc, 'span', { class: 'icon-wrap' });
    icon.append(kindIcon(doc, meta.kind));
    const titles = el(doc, 'div', { class: 'titles' });
    titles.append(el(doc, 'h3', { id: titleId, class: 'card-title' }, name));
    const sub = el(doc, 'p', { class: 'card-sub' });
    const parts = [meta.room, meta.kind ? humanize(meta.kind) : 'Unknown kind'].filter((p) => typeof p === 'string' && p);
    sub.append(el(doc, 'span', {}, parts.join(' · ')), el(doc, 'code', { class: 'device-id' }, device.id));
    titles.append(sub);
    this.badge = el(doc, 'span', { class: 'badge', 'data-condition': 'unknown' });
    this.badge.append(el(doc, 'span', { class: 'dot', 'aria-hidden': 'true' }), el(doc, 'span', { class: 'badge-text' }, 'Unknown'));
    head.append(icon, titles, this.badge);

    this.metricList = el(doc, 'dl', { class: 'metrics' });
    const controls = orderedControls(meta.controls);
    this.controlBox = el(doc, 'div', { class: 'controls', role: 'group', 'aria-label': `Controls of ${name}` });
    for (const [cname, spec] of controls) {
      const control = createControl(doc, {
        name: cname,
        spec,
        deviceName: name,
        send: (params) => this.send(device.id, params),
      });
      this.controls.set(cname, control);
      this.controlBox.append(control.el);
    }
    this.readonly = el(doc, 'p', { class: 'readonly-note', hidden: '' }, 'Read only: your certificate may not control this device.');
    this.controlBox.prepend(this.readonly);
    this.foot = el(doc, 'p', { class: 'card-foot' });
    this.el.append(head, this.metricList);
    if (controls.length > 0) this.el.append(this.controlBox);
    this.el.append(this.foot);
  }

  metric(device, field) {
    let m = this.metrics.get(field);
    if (m) return m;
    const doc = this.doc;
    const spec = device.meta?.telemetry?.[field] ?? {};
    const numeric = spec.type ? isNumericType(spec.type) : typeof device.telemetry?.[field] === 'number';
    const row = el(doc, 'div', { class: 'metric', 'data-field': field });
    const value = el(doc, 'dd', { class: 'metric-value' });
    const num = el(doc, 'span', { class: 'num' }, '—');
    value.append(num);
    if (spec.unit) value.append(el(doc, 'span', { class: 'unit' }, spec.unit));
    row.append(el(doc, 'dt', { class: 'metric-label' }, humanize(field)), value);
    m = { row, num, spec, spark: null, summary: null, drawn: null };
    if (numeric) {
      const sparkBox = el(doc, 'dd', { class: 'metric-spark' });
      m.spark = createSparkline(doc);
      m.summary = el(doc, 'span', { class: 'vh' });
      sparkBox.append(m.spark, m.summary);
      row.append(sparkBox);
    }
    this.metrics.set(field, m);
    this.metricList.append(row);
    return m;
  }

  update(device, condition, now, controllable = true) {
    this.condition = condition;
    setAttr(this.el, 'data-condition', condition.status);
    setAttr(this.badge, 'data-condition', condition.status);
    const label = CONDITION_LABELS[condition.status] ?? condition.status;
    const badgeText = this.badge.lastChild;
    if (badgeText.textContent !== label) badgeText.textContent = label;
    setAttr(this.badge, 'title', condition.reason);

    for (const field of telemetryFields(device)) {
      const m = this.metric(device, field);
      const text = formatValue(device.telemetry?.[field], m.spec);
      if (m.num.textContent !== text) m.num.textContent = text;
      // Redrawn only when the series moved: a path set again, even unchanged, is laid out again.
      if (m.spark && m.drawn !== device.seriesVersion) {
        m.drawn = device.seriesVersion;
        const series = (device.series.get(field) ?? []).map((p) => p.v);
        updateSparkline(m.spark, series, this.seriesLength);
        m.summary.textContent = series.length > 1
          ? `Recent values from ${formatValue(Math.min(...series), m.spec)} to ${formatValue(Math.max(...series), m.spec)}${m.spec.unit ? ` ${m.spec.unit}` : ''}.`
          : '';
      }
    }
    setProp(this.metricList, 'hidden', this.metrics.size === 0);

    for (const [name, control] of this.controls) {
      control.setEnabled(controllable);
      control.update(device.state?.[name], device.commands.get(name), now);
    }
    setProp(this.readonly, 'hidden', controllable);
    this.renderAge(device, now);
  }

  /** The footer: how old the data is, after the condition's reason when there is one. */
  renderAge(device, now) {
    const { status, reason } = this.condition;
    const updated = device.receivedAt !== null ? `Updated ${relativeTime(device.receivedAt, now)}` : this.metrics.size ? 'No data yet' : '';
    const foot = status === 'online' || !reason ? updated : `${reason}${updated ? ` ${updated}.` : ''}`;
    if (this.foot.textContent !== foot) this.foot.textContent = foot;
  }
}
