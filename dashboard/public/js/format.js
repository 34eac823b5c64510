// Turning meta names and raw values into text people read. Pure functions, no DOM.

/** `color_temp` -> `Color temp`, `powerW` -> `Power w`; keeps an already human name as it is. */
export function humanize(name) {
  const text = String(name ?? '')
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .replace(/[_-]+/g, ' ')
    .trim()
    .toLowerCase();
  return text ? text[0].toUpperCase() + text.slice(1) : '';
}

/** Number of decimals a step like 0.5 or 0.25 needs; 0 for whole steps. */
export function stepDecimals(step) {
  if (typeof step !== 'number' || !Number.isFinite(step) || step <= 0) return null;
  const text = String(step);
  if (text.includes('e-')) return Number(text.split('e-')[1]);
  const dot = text.indexOf('.');
  return dot < 0 ? 0 : text.length - dot - 1;
}

/** A readable number: integers as they are, others with precision that suits their size. */
export function formatNumber(value, spec = {}) {
  if (typeof value !== 'number' || !Number.isFinite(value)) return '—';
  if (spec.type === 'int') return String(Math.round(value));
  // A float field that happens to be whole keeps its usual decimals, so the digits do not jump.
  if (spec.type !== 'float' && Number.isInteger(value)) return String(value);
  const fixed = stepDecimals(spec.step);
  if (fixed !== null) return value.toFixed(fixed);
  const abs = Math.abs(value);
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 1) return value.toFixed(2);
  // Small readings (a fresh energy counter) keep two significant digits instead of showing 0.00.
  return String(Number(value.toPrecision(2)));
}

/** Text for a telemetry value or a control's reported value, without its unit. */
export function formatValue(value, spec = {}) {
  if (value === undefined || value === null) return '—';
  if (typeof value === 'boolean') return spec.type === 'bool' && spec.control ? (value ? 'On' : 'Off') : value ? 'Yes' : 'No';
  if (typeof value === 'number') return formatNumber(value, spec);
  if (typeof value === 'string') return value;
  // Values of types no meta describes (lists, maps) still show something truthful.
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

/** Value and unit as one string, for labels read by screen readers. */
export function withUnit(value, spec = {}) {
  const text = formatValue(value, spec);
  return spec.unit && text !== '—' ? `${text} ${spec.unit}` : text;
}

/** `5 s ago`, `3 min ago`; `just now` under two seconds. */
export function relativeTime(then, now) {
  if (typeof then !== 'number') return 'never';
  const s = Math.max(0, Math.round((now - then) / 1000));
  if (s < 2) return 'just now';
  if (s < 60) return `${s} s ago`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ago`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ago`;
  return `${Math.floor(h / 24)} d ago`;
}

/** Numeric types whose values can be charted. */
export function isNumericType(type) {
  return type === 'int' || type === 'float';
}

/**
 * Rounds a control value the way the device expects it: whole for int, on the step grid (counted
 * from `min`) for float, and always within [min, max], also where the grid does not land on max.
 */
export function snapToStep(value, spec = {}) {
  let v = Number(value);
  if (!Number.isFinite(v)) return null;
  const min = typeof spec.min === 'number' ? spec.min : -Infinity;
  const max = typeof spec.max === 'number' ? spec.max : Infinity;
  v = Math.min(max, Math.max(min, v));
  if (typeof spec.step === 'number' && spec.step > 0) {
    const base = Number.isFinite(min) ? min : 0;
    // The grid has the decimals of its step and of its start (0.25 + k * 0.5 needs two).
    const decimals = Math.max(stepDecimals(spec.step), stepDecimals(Math.abs(base)) ?? 0);
    const at = (k) => Number((base + k * spec.step).toFixed(decimals));
    const k = Math.round((v - base) / spec.step);
    // The nearest grid point can lie past a max the grid does not land on: take the one below.
    v = at(k) > max ? at(k - 1) : at(k);
  }
  if (spec.type === 'int') v = Math.min(Math.floor(max), Math.max(Math.ceil(min), Math.round(v)));
  return v;
}
