// Measures what the page's once-a-second refresh costs with a large fleet: headless Chromium
// loads public/ against a stand-in bridge (a welcome, a snapshot of N devices, 60 history samples
// each, then silence, so the clock is the only thing that changes), and Chromium's own counters
// say how much main-thread work each second takes: all of it, and the script part alone.
//
// Usage: node tools/measure-refresh.js [--devices 1000] [--seconds 8] [--public DIR]
// (--public: another copy of the page, e.g. an older commit's, to compare with.)
import { parseArgs } from 'node:util';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, chromiumPath } from '../e2e/browser.js';

const { values: args } = parseArgs({
  options: {
    devices: { type: 'string', default: '1000' },
    seconds: { type: 'string', default: '8' },
    public: { type: 'string', default: fileURLToPath(new URL('../public/', import.meta.url)) },
  },
});
const count = Number(args.devices);
const seconds = Number(args.seconds);
// Readings are fresh when the snapshot comes; past 15 s without news every device would turn
// stale in the middle of the measurement and re-render for that reason.
if (!(seconds >= 1 && seconds <= 10)) throw new Error('--seconds must be between 1 and 10');

const ORIGIN = 'http://dashboard.test';
const KINDS = [
  {
    kind: 'thermostat',
    telemetry: { temperature: { type: 'float', unit: '°C', min: -20, max: 50 }, humidity: { type: 'float', unit: '%', min: 0, max: 100 } },
    controls: { setpoint: { type: 'float', unit: '°C', min: 5, max: 35, step: 0.5 }, mode: { type: 'enum', choices: ['off', 'heat', 'cool', 'auto'] } },
    state: { setpoint: 21, mode: 'heat' },
    reading: (i) => ({ temperature: 20 + Math.sin(i / 5), humidity: 45 + Math.cos(i / 7) }),
  },
  {
    kind: 'light',
    telemetry: { power: { type: 'float', unit: 'W', min: 0, max: 12 } },
    controls: { on: { type: 'bool' }, brightness: { type: 'int', unit: '%', min: 0, max: 100, step: 1 } },
    state: { on: true, brightness: 60 },
    reading: (i) => ({ power: 6 + Math.sin(i / 3) }),
  },
];

function fleet(ts) {
  return Array.from({ length: count }, (_, n) => {
    const k = KINDS[n % KINDS.length];
    const id = `${k.kind}-${String(n).padStart(5, '0')}`;
    return {
      id,
      meta: { kind: k.kind, name: `${k.kind} ${n}`, room: `Room ${n % 40}`, telemetry: k.telemetry, controls: k.controls, actions: ['set'] },
      presence: 'online', state: k.state, telemetry: k.reading(60), seq: 60, ts, kind: k,
    };
  });
}

/** Plays the bridge: welcome, a snapshot of the whole fleet, and history for whoever asks. */
function standInBridge(ws) {
  const devices = new Map(fleet(Date.now()).map((d) => [d.id, d]));
  const send = (msg) => ws.send(JSON.stringify(msg));
  send({
    type: 'welcome', protocol: 'iotbridge.v1', server: 'measure-refresh', instance: 'm1', identity: 'measure',
    permissions: { read: ['*'], control: ['*'] }, broker: 'up',
    limits: { max_frame_bytes: 65536, max_subscriptions: 256 }, features: ['history', 'resume'],
  });
  ws.onMessage((text) => {
    const msg = JSON.parse(text);
    if (msg.type === 'subscribe') {
      send({ type: 'snapshot', req: msg.req, epoch: 'measure.1', resume: 'r', devices: [...devices.values()].map(({ kind: _kind, ...d }) => d) });
    } else if (msg.type === 'history') {
      const { kind } = devices.get(msg.device);
      const samples = Array.from({ length: 60 }, (_, i) => ({ seq: i + 1, ts: Date.now() - (60 - i) * 1000, data: kind.reading(i) }));
      send({ type: 'history', req: msg.req, device: msg.device, samples });
    } else if (msg.type === 'ping') {
      send({ type: 'pong', req: msg.req });
    }
  });
}

const browser = await chromium.launch({ executablePath: chromiumPath(), args: CHROMIUM_ARGS });
try {
  // Reduced motion stops the Live pill's pulse (which in pages before it moved to the
  // compositor repainted every frame), so that what is measured is the refresh alone.
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 }, reducedMotion: 'reduce' });
  await page.route(`${ORIGIN}/**`, (route) => {
    const file = new URL(route.request().url()).pathname.replace(/\/$/, '/index.html');
    return route.fulfill({ path: path.join(args.public, file) });
  });
  await page.routeWebSocket(`${ORIGIN.replace('http', 'ws')}/ws`, standInBridge);
  await page.goto(`${ORIGIN}/`);
  await page.waitForFunction((n) => {
    const devices = [...(window.iotDashboard?.store.devices.values() ?? [])];
    return devices.length === n && devices.every((d) => d.series.get('temperature')?.length === 60 || d.series.get('power')?.length === 60);
  }, count, { timeout: 60000, polling: 200 });
  // Let the renders of the snapshot and the history settle.
  await page.waitForTimeout(1000);

  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Performance.enable');
  const metrics = async () => Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((m) => [m.name, m.value]));
  const all = [];
  const script = [];
  let before = await metrics();
  for (let s = 0; s < seconds; s++) {
    await page.waitForTimeout(1000);
    const now = await metrics();
    all.push((now.TaskDuration - before.TaskDuration) * 1000);
    script.push((now.ScriptDuration - before.ScriptDuration) * 1000);
    before = now;
  }
  const line = (what, ms) => {
    const sorted = [...ms].sort((a, b) => a - b);
    return `${what}: ${ms.map((v) => v.toFixed(0)).join(' ')} (${sorted[0].toFixed(0)}-${sorted.at(-1).toFixed(0)}, median ${sorted[Math.floor(ms.length / 2)].toFixed(0)})`;
  };
  console.log(`${count} devices, ${args.public}; ms of main-thread work in each second`);
  console.log(line('all (script, style, layout, paint)', all));
  console.log(line('script', script));
} finally {
  await browser.close();
}
