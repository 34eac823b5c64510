// Entry point: connects the protocol client, the device store and the view.

import { BridgeClient } from './client.js';
import { DeviceStore, SERIES_LENGTH } from './store.js';
import { isNumericType } from './format.js';
import { DashboardView } from './view.js';

/** The WebSocket endpoint on this page's own origin (same origin: the browser reuses the client certificate). */
function endpoint(loc) {
  const url = new URL('ws', loc.href);
  url.protocol = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  url.search = '';
  url.hash = '';
  return url.href;
}

const client = new BridgeClient({
  url: endpoint(window.location),
  connect: (url, protocols) => new WebSocket(url, protocols),
});
const store = new DeviceStore();
const view = new DashboardView(window, store, {
  send: (device, params) => client.command(device, params),
  retry: () => client.reconnectNow(),
});

/**
 * Fills the sparklines of these devices from the bridge's stored history. The only place that
 * asks for history; it does nothing on bridges whose welcome does not list the `history` feature.
 */
function fillHistory(devices) {
  if (!client.supports('history')) return;
  for (const d of devices) {
    for (const [field, spec] of Object.entries(d.meta?.telemetry ?? {})) {
      if (!isNumericType(spec?.type)) continue;
      client.history(d.id, field, { limit: SERIES_LENGTH })
        .then((msg) => store.fillSeries(d.id, field, (msg.points ?? []).map((p) => (Array.isArray(p) ? p[1] : p?.value))))
        .catch(() => {
          // A sparkline without history still fills from live values.
        });
    }
  }
}

client.on('connection', (evt) => {
  store.setConnection(evt.state);
  view.connection(evt);
});
client.on('welcome', (msg) => view.welcome(msg));
client.on('broker', (msg) => store.setBroker(msg.status));
client.on('snapshot', (snap) => {
  store.applySnapshot(snap);
  if (snap.recovered !== true) fillHistory(snap.devices);
});
client.on('telemetry', (msg) => store.applyTelemetry(msg));
client.on('state', (msg) => store.applyState(msg));
client.on('presence', (msg) => store.applyPresence(msg));
client.on('device', (msg) => {
  store.applyDevice(msg);
  if (!msg.removed && msg.meta) fillHistory([{ id: msg.device, meta: msg.meta }]);
});
client.on('command', (evt) => store.applyCommand(evt));
client.on('lagging', (msg) => view.notify(`This page fell behind; ${msg.conflated} older readings were skipped.`));
client.on('error', (msg) => view.notify(`The bridge refused a request: ${msg.message ?? msg.code}`));

// Coming back online or to the tab: try at once instead of waiting out the backoff.
window.addEventListener('online', () => client.reconnectNow());
document.addEventListener('visibilitychange', () => {
  if (!document.hidden) client.reconnectNow();
});
window.addEventListener('pagehide', () => client.stop());
window.addEventListener('pageshow', (event) => {
  // Restored from the back/forward cache after `pagehide` stopped the client.
  if (event.persisted) client.start();
});

// For the browser tests and for poking around in the console.
window.iotDashboard = { client, store, view };

client.start();
