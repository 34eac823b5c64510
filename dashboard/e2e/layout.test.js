// Browser test with a large fleet: 6,000 simulated devices on one page, and a reconnect whose
// resume point (every device's last seq) is too big for the bridge's frame limit. The page must
// stay correct (every device, live, resynced once: no 1009 close, no reconnect loop) and
// responsive (no long freeze, typing answered) while it lays out and refreshes that many cards.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

import { CHROMIUM_ARGS, chromiumPath } from './browser.js';
import { Stack, waitFor } from './stack.js';

const COUNT = 6000;
/** The longest the page may be busy without a break once the cards are built, in ms. */
const LONGEST_TASK_MS = 3000;

let stack;
let browser;
let page;
const pageErrors = [];

const text = async (locator) => (await locator.textContent())?.trim();
const summary = () => text(page.locator('#summary'));
/** Waits for the summary line to read `expected`; fails with what it read last. */
async function summaryReads(expected, timeoutMs) {
  let last;
  await waitFor(`the summary "${expected}"`, async () => (last = await summary()) === expected, { timeoutMs, everyMs: 1000 })
    .catch((e) => { throw new Error(`${e.message}; it reads "${last}"`); });
}
/** Main-thread tasks longer than 50 ms since the last call, longest first. */
const longTasks = () => page.evaluate(() => window.longTasks.splice(0).sort((a, b) => b - a));

describe('dashboard with a large fleet', () => {
  before(async () => {
    // Paced, so that the retained meta and status of 6,000 devices reach the bridge (Mosquitto
    // drops messages queued for a client beyond its max_queued_messages).
    stack = await Stack.start({ fleet: COUNT, interval: '10s', connectRate: 100 });
    await waitFor('the bridge to see the whole fleet online', async () => (await stack.devicesAt('online')) === COUNT, { timeoutMs: 120000, everyMs: 1000 });

    browser = await chromium.launch({ executablePath: chromiumPath(), args: CHROMIUM_ARGS });
    const context = await browser.newContext({
      viewport: { width: 1280, height: 800 },
      ignoreHTTPSErrors: true,
      clientCertificates: [{ origin: stack.origin, certPath: stack.cert('users/tester.pem'), keyPath: stack.cert('users/tester.key') }],
    });
    page = await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(m.text());
    });
    await page.addInitScript(() => {
      window.longTasks = [];
      new PerformanceObserver((list) => {
        for (const entry of list.getEntries()) window.longTasks.push(Math.round(entry.duration));
      }).observe({ type: 'longtask' });
    });
    await page.goto(`${stack.origin}/`);
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await stack?.stop();
  });

  test('shows every device, online', { timeout: 300000 }, async () => {
    const started = Date.now();
    await waitFor('every card', async () => (await page.locator('article.card').count()) === COUNT, { timeoutMs: 240000, everyMs: 1000 });
    console.log(`# ${COUNT} cards in ${((Date.now() - started) / 1000).toFixed(0)} s`);
    await summaryReads(`${COUNT} devices · ${COUNT} online`, 60000);
    const built = await longTasks();
    console.log(`# longest tasks while building ${COUNT} cards: ${built.slice(0, 5).join(', ')} ms`);
  });

  test('a reconnect resyncs once, without a resume point the bridge would refuse', { timeout: 180000 }, async () => {
    await page.evaluate(() => {
      window.states = [];
      window.iotDashboard.client.on('connection', (e) => window.states.push(e.state));
      window.iotDashboard.client.socket.close();
    });
    await waitFor('the page to be live again', () => page.evaluate(() => window.states.includes('open')), { timeoutMs: 60000, everyMs: 500 });
    const client = await page.evaluate(() => ({ states: window.states, since: window.iotDashboard.client.sentSince }));
    assert.deepEqual(client.states, ['down', 'connecting', 'open'], 'one attempt, not a loop');
    assert.equal(client.since, null, 'a point for 6,000 devices exceeds the frame limit: not sent');
    const metrics = (await stack.get('/metrics')).body;
    assert.match(metrics, /^iotbridge_clients_closed_total\{reason="oversized"\} 0$/m, 'no 1009 close');

    await summaryReads(`${COUNT} devices · ${COUNT} online`, 60000);
    assert.equal(await page.locator('article.card').count(), COUNT);
    const value = page.locator('article[data-device="sensor-0042"] .metric[data-field="illuminance"] .num');
    const before = await text(value);
    await waitFor('live readings after the reconnect', async () => (await text(value)) !== before, { timeoutMs: 30000, everyMs: 500 });
  });

  test('the page stays responsive: no long freeze, and typing answered within seconds', { timeout: 120000 }, async () => {
    // Settled: history has filled the charts, telemetry flows.
    await waitFor('history in the first card', async () => ((await page.locator('article.card .spark-line').first().getAttribute('d')) ?? '').split('L').length > 10, { timeoutMs: 60000, everyMs: 1000 });
    const reconnect = await longTasks();
    assert.ok((reconnect[0] ?? 0) < LONGEST_TASK_MS, `longest tasks during the reconnect: ${reconnect.slice(0, 5).join(', ')} ms`);

    const filter = page.getByRole('searchbox', { name: 'Filter devices' });
    const started = Date.now();
    await filter.fill('sensor-0042');
    await waitFor('the filter to apply', async () => (await page.locator('article.card').count()) === 1, { timeoutMs: 10000, everyMs: 100 });
    const answered = Date.now() - started;
    await filter.fill('');
    await waitFor('every card back', async () => (await page.locator('article.card').count()) === COUNT, { timeoutMs: 30000, everyMs: 500 });
    const live = await longTasks();
    assert.ok((live[0] ?? 0) < LONGEST_TASK_MS, `longest tasks while live: ${live.slice(0, 5).join(', ')} ms`);
    console.log(`# filter answered in ${answered} ms; longest tasks: reconnect ${reconnect.slice(0, 3).join(', ')} ms, live ${live.slice(0, 3).join(', ')} ms`);
  });

  test('no errors in the page', () => {
    assert.deepEqual(pageErrors, []);
  });
});
