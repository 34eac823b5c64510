// Entry point: connects the protocol client, the device store and the view.

import { BridgeClient } from './client.js';
import { DeviceStore, SERIES_LENGTH } from './store.js';
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
  retry: () => client.retry(),
});

/**
 * Fills the sparklines of these devices from the bridge's stored telemetry: one `history`
 * request per device, all fields at once. The only place that asks for history; it does
 * nothing on a bridge that does not have it (the client knows from the welcome).
 */
function fillHistory(ids) {
  for (const id of ids) {
    if (!client.supports('history')) return;
    client.history(id, undefined, { limit: SERIES_LENGTH })
      .then((msg) => store.fillSeries(id, msg.samples))
      .catch(() => {
        // Without history a sparkline still fills from live values.
      });
  }
}

client.on('connection', (evt) => {
  store.setConnection(evt.state);
  view.connection(evt);
});
client.on('welcome', (msg) => {
  view.welcome(msg);
  store.setPermissions(msg.permissions);
});
client.on('permissions', (msg) => store.setPermissions(msg));
client.on('broker', (msg) => store.setBroker(msg.status));
client.on('snapshot', (snap) => {
  store.applySnapshot(snap);
  // A recovered resume replays what was missed; otherwise the charts have a gap to fill.
  if (snap.recovered !== true) fillHistory(snap.devices.map((d) => d.id));
});
client.on('telemetry', (msg) => store.applyTelemetry(msg));
client.on('state', (msg) => store.applyState(msg));
client.on('presence', (msg) => store.applyPresence(msg));
client.on('device', (msg) => {
  store.applyDevice(msg);
});
client.on('command', (evt) => store.applyCommand(evt));
client.on('lagging', (msg) => view.notify(`This page fell behind; ${msg.conflated} older readings were skipped.`));
client.on('error', (msg) => view.notify(`The bridge refused a request: ${msg.message ?? msg.code}`));

// Coming back online or to the tab: try at once instead of waiting out the backoff, and make
// sure a connection that looks open still is.
window.addEventListener('online', () => client.checkNow());
document.addEventListener('visibilitychange', () => {
  if (!document.hidden) client.checkNow();
});
window.addEventListener('pagehide', () => client.stop());
window.addEventListener('pageshow', (event) => {
  // Restored from the back/forward cache after `pagehide` stopped the client.
  if (event.persisted) client.start();
});

// For the browser tests and for poking around in the console.
window.iotDashboard = { client, store, view };

client.start();
