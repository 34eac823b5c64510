// Finding devices: text filter and grouping by kind or room. Pure, no DOM.

import { humanize } from './format.js';

export const GROUPINGS = ['none', 'kind', 'room'];

/** Device glob as the bridge reads it: `*` any run of characters, `?` exactly one. */
export function globMatch(pattern, id) {
  if (typeof pattern !== 'string' || typeof id !== 'string') return false;
  const source = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${source}$`).test(id);
}

/** Every word of the query must appear in the device's name, id, kind, room or condition. */
export function matches(device, query, condition = '') {
  const words = String(query ?? '').toLowerCase().split(/\s+/).filter(Boolean);
  if (words.length === 0) return true;
  const meta = device.meta ?? {};
  const haystack = [device.id, meta.name, meta.kind, meta.room, condition]
    .filter((v) => typeof v === 'string')
    .join(' ')
    .toLowerCase();
  return words.every((w) => haystack.includes(w));
}

/**
 * Splits sorted devices into labelled groups. `none` gives one group; devices without the
 * grouping field land in a last group ("Other kinds" / "No room").
 */
export function groupDevices(devices, by) {
  if (by !== 'kind' && by !== 'room') return [{ key: 'all', label: 'All devices', devices }];
  const groups = new Map();
  for (const d of devices) {
    const raw = d.meta?.[by];
    const key = typeof raw === 'string' && raw.trim() ? raw.trim() : '';
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(d);
  }
  const missing = by === 'kind' ? 'Other kinds' : 'No room';
  return [...groups.entries()]
    .sort(([a], [b]) => (a === '' ? 1 : b === '' ? -1 : a.localeCompare(b)))
    .map(([key, list]) => ({
      key: `${by}:${key}`,
      label: key === '' ? missing : by === 'kind' ? humanize(key) : key,
      devices: list,
    }));
}
