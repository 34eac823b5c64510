// Browser tests: headless Chromium against a real bridge, Mosquitto and simulated devices.
// The tests run in order and share one page, like a person keeping the dashboard open while the
// fleet lives, a command is refused, a device dies, the bridge restarts and the broker goes away.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';

import { CHROMIUM_ARGS, chromiumPath } from './browser.js';
import { decodePayload } from './cbor.js';
import { AQUARIUM_ID, runAquarium } from './fake-device.js';
import { RESULTS, Stack, sleep, waitFor } from './stack.js';

const SHOTS = path.join(RESULTS, 'screenshots');
const FLEET = ['thermostat-001', 'light-001', 'plug-001', 'sensor-001', 'blind-001', 'thermostat-002', 'light-002', 'plug-002'];
const LAB_PLUG = 'lab-plug-001';
const ALL = [...FLEET, LAB_PLUG, AQUARIUM_ID];
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const NARROW_PHONE = { width: 360, height: 740 };
/** A device id with nowhere to break a line (ids may have 64 characters). */
const LONG_ID = 'warehouse_b_rack_17_shelf_4_bin_12_humidity_sensor';

let stack;
let browser;
let page;
let aquarium;
/** MQTT client with LONG_ID's certificate, for a device that comes and goes during the tests. */
let longIdClient;
let loadedAt;
/** Latest retained state per device as the broker holds it: the device side of a command. */
const deviceState = new Map();
const pageErrors = [];

const card = (id) => page.locator(`article[data-device="${id}"]`);
const text = async (locator) => (await locator.textContent())?.trim();
const badge = (id) => text(card(id).locator('.badge-text'));

/** Makes LONG_ID a device with `meta`, or with null removes it again (empty retained meta and status). */
async function setLongIdDevice(meta) {
  const publish = (topic, payload) => longIdClient.publishAsync(`iot/${LONG_ID}/${topic}`, payload, { qos: 1, retain: true });
  await publish('meta', meta ? JSON.stringify(meta) : '');
  await publish('status', meta ? 'online' : '');
}

async function screenshot(name) {
  await mkdir(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
}

describe('dashboard against a real bridge', () => {
  before(async () => {
    stack = await Stack.start({ devices: [AQUARIUM_ID, LONG_ID] });
    // A device of its own process, to be killed abruptly later (its MQTT will says `offline`).
    await stack.startFleet('lab', ['--count', '1', '--kinds', 'plug', '--id-prefix', 'lab-']);
    const will = { topic: `iot/${AQUARIUM_ID}/status`, payload: 'offline', qos: 1, retain: true };
    aquarium = await runAquarium(await stack.mqtt(`devices/${AQUARIUM_ID}`, AQUARIUM_ID, { will }));
    longIdClient = await stack.mqtt(`devices/${LONG_ID}`, LONG_ID);

    // The bridge's certificate may read every device's retained state: use it as the observer.
    const observer = await stack.mqtt('bridge-client', 'dashboard-e2e-observer');
    observer.on('message', (topic, payload) => {
      const id = topic.split('/')[1];
      try {
        deviceState.set(id, decodePayload(payload));
      } catch {
        // Not a map: not something the tests look at.
      }
    });
    await observer.subscribeAsync('iot/+/state', { qos: 1 });

    browser = await chromium.launch({ executablePath: chromiumPath(), args: CHROMIUM_ARGS });
    const context = await browser.newContext({
      viewport: DESKTOP,
      ignoreHTTPSErrors: true,
      clientCertificates: [{ origin: stack.origin, certPath: stack.cert('users/tester.pem'), keyPath: stack.cert('users/tester.key') }],
    });
    page = await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => {
      // The browser logs each refused reconnect while the bridge is down; that is expected.
      if (m.type() === 'error' && !/WebSocket connection to .* failed/.test(m.text())) pageErrors.push(m.text());
    });
    await page.goto(`${stack.origin}/`);
    loadedAt = Date.now();
  });

  after(async () => {
    aquarium?.stop();
    await browser?.close().catch(() => {});
    await stack?.stop();
  });

  test('lists the whole fleet from meta, online, with units and sparklines', { timeout: 30000 }, async () => {
    await waitFor('every device card', async () => (await page.locator('article.card').count()) === ALL.length);
    for (const id of ALL) {
      await waitFor(`${id} online`, async () => (await badge(id)) === 'Online');
    }
    assert.equal(await text(page.locator('#conn-text')), 'Live');
    assert.equal(await text(card('light-001').locator('.card-sub code')), 'light-001');
    const thermo = card('thermostat-001');
    assert.equal(await text(thermo.locator('.metric[data-field="temperature"] .unit')), '°C');
    assert.equal(await thermo.locator('.metric[data-field="temperature"] svg.spark').count(), 1);
    assert.equal(await thermo.locator('.metric[data-field="hvac"] svg.spark').count(), 0, 'no chart for an enum');
    assert.ok(await thermo.getByRole('combobox', { name: /^Mode/ }).isVisible());
    assert.ok(await thermo.getByRole('slider', { name: /^Setpoint/ }).isVisible());
    assert.match(await text(page.locator('#summary')), /^10 devices · 10 online/);
  });

  test('live values change and the sparkline grows', { timeout: 20000 }, async () => {
    const metric = card('sensor-001').locator('.metric[data-field="illuminance"]');
    const firstValue = await text(metric.locator('.num'));
    const firstPath = await metric.locator('.spark-line').getAttribute('d');
    await waitFor('a new illuminance value', async () => (await text(metric.locator('.num'))) !== firstValue, { timeoutMs: 10000 });
    await waitFor('the sparkline to change', async () => (await metric.locator('.spark-line').getAttribute('d')) !== firstPath);
    const points = (await metric.locator('.spark-line').getAttribute('d')).split('L').length;
    assert.ok(points >= 3, `sparkline has ${points} points`);
  });

  test('rendering every card again without news writes nothing to the page', { timeout: 20000 }, async () => {
    // Each write, even of the same value, is a card to lay out again: with thousands of cards a
    // full render (a reconnect, a filter) took seconds of layout.
    const writes = await page.evaluate(() => {
      const { view } = window.iotDashboard;
      view.render(null);
      const observer = new MutationObserver(() => {});
      observer.observe(document.getElementById('groups'), { subtree: true, attributes: true, childList: true, characterData: true });
      view.render(null);
      const records = observer.takeRecords();
      observer.disconnect();
      // Ages may move on between the two renders.
      const element = (node) => (node.nodeType === Node.ELEMENT_NODE ? node : node.parentElement);
      return records.filter((r) => !element(r.target).closest('.card-foot'))
        .map((r) => `${r.type} ${r.attributeName ?? ''} on ${element(r.target).outerHTML.slice(0, 60)}`);
    });
    assert.deepEqual(writes, []);
  });

  test('toggling a light changes the device, and the switch follows its reported state', { timeout: 20000 }, async () => {
    const sw = card('light-001').getByRole('switch', { name: /^On/ });
    await waitFor('the light to report its state', () => deviceState.has('light-001'));
    const before = (await sw.getAttribute('aria-checked')) === 'true';
    assert.equal(deviceState.get('light-001').on, before, 'the page shows what the device reports');
    await page.evaluate(() => {
      window.__commands = [];
      window.iotDashboard.client.on('command', (e) => window.__commands.push(e.status));
    });
    await sw.click();
    await waitFor('the device to switch', () => deviceState.get('light-001')?.on === !before);
    await waitFor('the switch to settle on the reported state', async () => (await sw.getAttribute('aria-checked')) === String(!before));
    const seen = await page.evaluate(() => window.__commands);
    assert.deepEqual([seen[0], seen.at(-1)], ['pending', 'ok'], `statuses: ${seen.join(', ')}`);
    assert.ok(seen.slice(0, -1).every((st) => st === 'pending'), `statuses: ${seen.join(', ')}`);
    assert.equal(await text(card('light-001').locator('[data-control="on"] .cmd-status')), 'Done');

    // The same from the keyboard: focus the switch and press Space.
    await sw.focus();
    await page.keyboard.press('Space');
    await waitFor('the device to switch back', () => deviceState.get('light-001')?.on === before);
    await waitFor('the switch to follow', async () => (await sw.getAttribute('aria-checked')) === String(before));
  });

  test('a device of an unknown kind renders from its meta and is controllable', { timeout: 20000 }, async () => {
    const tank = card(AQUARIUM_ID);
    assert.equal(await text(tank.locator('.card-title')), 'Reef tank');
    assert.match(await text(tank.locator('.card-sub')), /Living room · Aquarium/);
    assert.equal(await text(tank.locator('.metric[data-field="pump_rpm"] .unit')), 'rpm');
    const pump = tank.getByRole('switch', { name: /^Pump/ });
    assert.equal(await pump.getAttribute('aria-checked'), 'true');
    await pump.click();
    await waitFor('the pump to stop on the device', () => aquarium.state.pump === false);
    await waitFor('the switch to show it', async () => (await pump.getAttribute('aria-checked')) === 'false');
    await tank.getByRole('combobox', { name: /^Light mode/ }).selectOption('night');
    await waitFor('the light mode on the device', () => aquarium.state.light_mode === 'night');
    const feed = tank.getByRole('spinbutton', { name: /^Feed grams/ });
    await feed.fill('5');
    await feed.press('Enter');
    await waitFor('feed grams on the device', () => aquarium.state.feed_grams === 5);
    await waitFor('the output to show it', async () => (await text(tank.locator('[data-control="feed_grams"] output'))) === '5 g');
  });

  test('a slider held by the pointer stays put under live updates, and sends on release', { timeout: 20000 }, async () => {
    const control = card(AQUARIUM_ID).locator('[data-control="heater_target"]');
    const slider = control.getByRole('slider', { name: /^Heater target/ });
    const box = await slider.boundingBox();
    const y = box.y + box.height / 2;
    await page.mouse.move(box.x + box.width * 0.5, y);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.62, y, { steps: 4 });
    const held = await slider.inputValue();
    assert.notEqual(held, '25', 'the thumb moved');
    await sleep(800); // several telemetry renders of this card
    assert.equal(await slider.inputValue(), held, 'live updates did not move the held thumb');
    assert.equal(aquarium.state.heater_target, 25, 'nothing sent while held');
    await page.mouse.up();
    await waitFor('the device to take the new target', () => aquarium.state.heater_target === Number(held));
    await waitFor('the output to show it', async () => (await text(control.locator('output'))) === `${Number(held).toFixed(1)} °C`);
    // Back to 25 with the keyboard, for the next test.
    await slider.focus();
    for (let v = Number(held); v > 25; v -= 0.5) await page.keyboard.press('ArrowLeft');
    await waitFor('the device back at 25', () => aquarium.state.heater_target === 25);
    await waitFor('the slider at 25', async () => (await slider.inputValue()) === '25');
  });

  test('a rejected command shows the reason and the control returns to the reported value', { timeout: 20000 }, async () => {
    const control = card(AQUARIUM_ID).locator('[data-control="heater_target"]');
    const slider = control.getByRole('slider', { name: /^Heater target/ });
    assert.equal(await slider.inputValue(), '25');
    await slider.focus();
    await page.keyboard.press('End');
    const status = control.locator('.cmd-status');
    await waitFor('the rejection', async () => (await text(status))?.startsWith('Rejected'));
    assert.equal(await text(status), 'Rejected: heater target above 28 °C is unsafe for the fish');
    assert.equal(await status.getAttribute('data-status'), 'rejected');
    await waitFor('the slider to return to 25', async () => (await slider.inputValue()) === '25');
    assert.equal(await text(control.locator('output')), '25.0 °C');
    assert.equal(aquarium.state.heater_target, 25, 'the device kept its value');
  });

  test('filter by text and group by kind or room', { timeout: 20000 }, async () => {
    const visibleCards = () => page.locator('article.card').evaluateAll((els) => els.map((e) => e.dataset.device).sort());
    await page.getByRole('searchbox', { name: 'Filter devices' }).fill('thermostat');
    await waitFor('the filter', async () => (await visibleCards()).join() === 'thermostat-001,thermostat-002');
    assert.match(await text(page.locator('#summary')), /2 shown/);
    await page.getByRole('searchbox', { name: 'Filter devices' }).fill('zzz-nothing');
    await waitFor('the empty message', async () => (await text(page.locator('#empty'))) === 'No device matches “zzz-nothing”.');
    await page.getByRole('searchbox', { name: 'Filter devices' }).fill('');

    await page.getByRole('radio', { name: 'Kind' }).check();
    await waitFor('kind groups', async () => (await page.locator('h2.group-title').count()) === 6);
    const kinds = await page.locator('h2.group-title').evaluateAll((hs) => hs.map((h) => h.firstChild.textContent));
    assert.deepEqual(kinds, ['Aquarium', 'Blind', 'Light', 'Plug', 'Sensor', 'Thermostat']);
    assert.equal(await card('light-002').locator('xpath=ancestor::section').locator('h2').evaluate((h) => h.firstChild.textContent), 'Light');
    await page.getByRole('radio', { name: 'Room' }).check();
    await waitFor('room groups', async () => (await page.locator('h2.group-title').first().evaluate((h) => h.firstChild.textContent)) !== 'Aquarium');
    const tankGroup = await card(AQUARIUM_ID).locator('xpath=ancestor::section').locator('h2').evaluate((h) => h.firstChild.textContent);
    assert.equal(tankGroup, 'Living room');
    await page.getByRole('radio', { name: 'None' }).check();
    await waitFor('one group again', async () => (await page.locator('h2.group-title').count()) === 0);
  });

  test('cards coming and going keep the focus and what someone is typing', { timeout: 20000 }, async () => {
    const note = card(AQUARIUM_ID).getByRole('textbox', { name: /^Note/ });
    const isFocused = () => note.evaluate((el) => el === document.activeElement);
    await note.click();
    await page.keyboard.type('half');
    // A device that sorts before the aquarium appears, then goes again.
    await setLongIdDevice({ kind: 'sensor', name: 'Humidity', telemetry: { humidity: { type: 'float', unit: '%' } } });
    await waitFor('the new card', async () => (await card(LONG_ID).count()) === 1);
    assert.ok(await isFocused(), 'focus stays in the field when a card appears');
    await page.keyboard.type(' typed');
    await setLongIdDevice(null);
    await waitFor('the card gone', async () => (await card(LONG_ID).count()) === 0);
    assert.ok(await isFocused(), 'and when a card goes');
    await page.keyboard.type(' note');
    assert.equal(await note.inputValue(), 'half typed note');
    assert.equal(aquarium.state.note, '', 'nothing was sent');

    // When cards must swap, the one holding the focus stays and the others move around it.
    const swapped = await page.evaluate(async () => {
      const { placeChildren } = await import('/js/view.js');
      const parent = document.createElement('div');
      const [a, b, c] = ['a', 'b', 'c'].map((name) => {
        const child = document.createElement('div');
        child.dataset.name = name;
        child.append(document.createElement('input'));
        return child;
      });
      parent.append(a, b, c);
      document.body.append(parent);
      c.firstChild.focus();
      placeChildren(parent, [c, b, a]);
      const result = { order: [...parent.children].map((n) => n.dataset.name).join(''), focused: document.activeElement === c.firstChild };
      parent.remove();
      return result;
    });
    assert.deepEqual(swapped, { order: 'cba', focused: true });
    await note.fill('');
    await note.blur();
  });

  test('on a phone: no sideways scrolling, 44 px targets, every control labelled', { timeout: 20000 }, async () => {
    await page.setViewportSize(PHONE);
    await sleep(300);
    const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    assert.ok(widths[0] <= widths[1], `page is ${widths[0]} px wide in a ${widths[1]} px viewport`);
    const small = await page.evaluate(() => {
      const out = [];
      for (const el of document.querySelectorAll('button, input, select, a[href], [role="switch"]')) {
        const r = el.getBoundingClientRect();
        const shown = r.width > 0 && r.height > 0 && r.bottom > 0 && getComputedStyle(el).visibility !== 'hidden';
        if (shown && (r.width < 44 || r.height < 44)) out.push(`${el.outerHTML.slice(0, 80)} ${r.width}x${r.height}`);
      }
      return out;
    });
    assert.deepEqual(small, [], 'touch targets smaller than 44 px');

    const cdp = await page.context().newCDPSession(page);
    const { nodes } = await cdp.send('Accessibility.getFullAXTree');
    const interactive = new Set(['button', 'switch', 'slider', 'combobox', 'textbox', 'spinbutton', 'searchbox', 'radio', 'link']);
    const unnamed = nodes.filter((n) => !n.ignored && interactive.has(n.role?.value) && !n.name?.value?.trim());
    assert.deepEqual(unnamed.map((n) => n.role.value), [], 'controls without an accessible name');
    const names = nodes.filter((n) => n.role?.value === 'switch').map((n) => n.name.value);
    assert.ok(names.includes('On, Office Light'), `switch names carry the device: ${names.join(' | ')}`);

    const manifest = await stack.get('/manifest.webmanifest');
    assert.equal(manifest.status, 200);
    const app = JSON.parse(manifest.body);
    assert.equal(app.display, 'standalone');
    assert.ok(app.icons.some((i) => i.sizes === '512x512'));
    for (const icon of app.icons) assert.equal((await stack.get(`/${icon.src}`)).status, 200, icon.src);

    await page.setViewportSize(DESKTOP);
  });

  test('on a narrow phone, long ids, rooms and values wrap instead of widening the page', { timeout: 20000 }, async () => {
    const note = card(AQUARIUM_ID).getByRole('textbox', { name: /^Note/ });
    const longNote = 'filter_changed_with_kit_4f9c2e7a1b3d5f6e8a9c0b1d2e3f4a5b6c7d8e9f';
    try {
      await setLongIdDevice({ kind: 'sensor', name: 'Humidity', room: 'Lagerhalle_Nord_Untergeschoss', telemetry: { humidity: { type: 'float', unit: '%' } } });
      await note.fill(longNote);
      await note.press('Enter');
      await waitFor('the long note on the device', () => aquarium.state.note === longNote);
      await waitFor('the note shown', async () => (await text(card(AQUARIUM_ID).locator('[data-control="note"] output'))) === longNote);
      await waitFor('the long-id card', async () => (await badge(LONG_ID)) === 'Online');

      await page.setViewportSize(NARROW_PHONE);
      await sleep(300);
      const overflow = await page.evaluate(() => {
        const out = [];
        const width = window.innerWidth;
        if (document.documentElement.scrollWidth > width) out.push(`page is ${document.documentElement.scrollWidth} px wide`);
        // Sticking out of a card is a defect too, even where the page would clip it.
        for (const el of document.querySelectorAll('body *')) {
          const r = el.getBoundingClientRect();
          const box = el.parentElement.closest('.card')?.getBoundingClientRect() ?? { left: 0, right: width };
          if (r.width > 0 && (r.left < box.left - 0.5 || r.right > box.right + 0.5)) {
            out.push(`${el.outerHTML.slice(0, 60)} spans ${Math.round(r.left)}..${Math.round(r.right)} in ${Math.round(box.left)}..${Math.round(box.right)}`);
          }
        }
        return out;
      });
      assert.deepEqual(overflow, [], 'nothing wider than the screen or its card');
    } finally {
      await page.setViewportSize(DESKTOP);
      // The device and the note go again, so later tests and screenshots see the usual fleet.
      await setLongIdDevice(null);
      await note.fill('');
      await note.press('Enter');
      await waitFor('the note cleared', () => aquarium.state.note === '');
    }
  });

  test('a device that dies is shown offline within seconds', { timeout: 20000 }, async () => {
    assert.equal(await badge(LAB_PLUG), 'Online');
    const started = Date.now();
    await stack.kill('lab', 'SIGKILL');
    await waitFor('the plug to show offline', async () => (await badge(LAB_PLUG)) === 'Offline', { timeoutMs: 5000 });
    const took = Date.now() - started;
    assert.ok(took < 5000, `took ${took} ms`);
    assert.equal(await card(LAB_PLUG).getAttribute('data-condition'), 'offline');
    const sw = card(LAB_PLUG).getByRole('switch', { name: /^On/ });
    const before = await sw.getAttribute('aria-checked');
    await sw.click();
    const status = card(LAB_PLUG).locator('[data-control="on"] .cmd-status');
    await waitFor('the offline answer', async () => (await status.getAttribute('data-status')) === 'offline');
    assert.equal(await sw.getAttribute('aria-checked'), before, 'the switch did not pretend');
  });

  test('the clock moves the ages of cards on screen without rendering them again', { timeout: 20000 }, async () => {
    // The plug died in the test before: nothing more comes from it.
    const watch = () => page.evaluate(async (id) => {
      const card = window.iotDashboard.view.cards.get(id);
      let updates = 0;
      card.update = (...args) => {
        updates += 1;
        Object.getPrototypeOf(card).update.apply(card, args);
      };
      const before = card.foot.textContent;
      await new Promise((resolve) => setTimeout(resolve, 2500));
      delete card.update;
      return { updates, before, after: card.foot.textContent, top: card.el.getBoundingClientRect().top };
    }, LAB_PLUG);
    const foot = card(LAB_PLUG).locator('.card-foot');
    await card(LAB_PLUG).scrollIntoViewIfNeeded();
    const seen = await watch();
    assert.notEqual(seen.after, seen.before, 'the age moved on');
    assert.equal(seen.updates, 0, 'the card was not rendered again');

    // Off screen an age waits (each one rewritten is a card laid out again), and catches up
    // as the card comes back into view.
    await page.setViewportSize(PHONE);
    await page.evaluate(() => window.scrollTo(0, document.documentElement.scrollHeight));
    const away = await watch();
    assert.ok(away.top < -PHONE.height, `the card is off screen (top ${away.top})`);
    assert.deepEqual([away.updates, away.after], [0, away.before]);
    await card(LAB_PLUG).scrollIntoViewIfNeeded();
    await waitFor('the age brought up to date', async () => (await text(foot)) !== away.before, { timeoutMs: 2000, everyMs: 50 });
    await page.setViewportSize(DESKTOP);
  });

  // It waits until the page has been live for 12 s, then takes six pictures, two of them full
  // page: some 25 s on a quiet 2-core machine with software rendering. It asserts nothing about
  // time, so its budget is generous.
  test('screenshots at desktop and phone size, light and dark', { timeout: 60000 }, async () => {
    // Let the sparklines fill a little more so the pictures show what a person sees after a while.
    await sleep(Math.max(0, 12000 - (Date.now() - loadedAt)));
    await page.evaluate(() => document.activeElement?.blur());
    // Desktop grouped by room; the phone by kind, which puts the aquarium and its controls first.
    for (const [size, viewport, grouping] of [['desktop', DESKTOP, 'Room'], ['phone', PHONE, 'Kind']]) {
      await page.getByRole('radio', { name: grouping }).check();
      await page.setViewportSize(viewport);
      for (const scheme of ['light', 'dark']) {
        await page.emulateMedia({ colorScheme: scheme });
        await page.evaluate(() => window.scrollTo(0, 0));
        await sleep(150);
        await screenshot(`${size}-${scheme}`);
      }
      await page.screenshot({ path: path.join(SHOTS, `${size}-full.png`), fullPage: true });
    }
    await page.emulateMedia({ colorScheme: 'light' });
    await page.setViewportSize(DESKTOP);
    await page.getByRole('radio', { name: 'None' }).check();
  });

  test('a page opened later fills its sparklines from the bridge history at once', { timeout: 20000 }, async () => {
    const second = await page.context().newPage();
    try {
      await second.goto(`${stack.origin}/`);
      const line = second.locator('article[data-device="sensor-001"] .metric[data-field="illuminance"] .spark-line');
      await waitFor('a filled sparkline', async () => ((await line.getAttribute('d')) ?? '').split('L').length >= 40, { timeoutMs: 3000 });
    } finally {
      await second.close();
    }
  });

  test('the page recovers by itself when the bridge restarts, resuming without a reload', { timeout: 45000 }, async () => {
    await page.evaluate(() => { window.__sameDocument = true; });
    const epoch = await page.evaluate(() => window.iotDashboard.client.epoch);
    assert.ok(epoch, 'the snapshot named the bridge epoch');
    await stack.kill('bridge', 'SIGTERM');
    await waitFor('the page to notice', async () => (await page.locator('#banner-connection').isVisible()));
    assert.notEqual(await text(page.locator('#conn-text')), 'Live');
    await sleep(1500);
    assert.equal(await card('light-001').getAttribute('data-condition'), 'stale', 'values are marked as last known');
    await screenshot('bridge-down');
    await stack.startBridge();
    await waitFor('the page to be live again', async () => (await text(page.locator('#conn-text'))) === 'Live', { timeoutMs: 20000 });
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload');
    const since = await page.evaluate(() => window.iotDashboard.client.sentSince);
    assert.equal(since.epoch, epoch, 'resubscribed from where it was');
    assert.ok(since.seqs['sensor-001'] > 10, 'naming the last reading it received per device');
    assert.notEqual(await page.evaluate(() => window.iotDashboard.client.epoch), epoch, 'a restarted bridge has a new epoch');
    assert.ok(await page.locator('#banner-connection').isHidden());
    for (const id of FLEET) await waitFor(`${id} online again`, async () => (await badge(id)) === 'Online');
    const metric = card('sensor-001').locator('.metric[data-field="illuminance"] .num');
    const value = await text(metric);
    await waitFor('live values after the restart', async () => (await text(metric)) !== value, { timeoutMs: 10000 });
  });

  test('a lost broker link is shown at a glance', { timeout: 20000 }, async () => {
    await stack.kill('mosquitto', 'SIGTERM');
    await waitFor('the broker banner', async () => page.locator('#banner-broker').isVisible(), { timeoutMs: 10000 });
    assert.equal(await text(page.locator('#conn-text')), 'Broker link down');
    await waitFor('devices marked stale', async () => (await badge('light-001')) === 'Stale');
    await page.setViewportSize(PHONE);
    await screenshot('broker-down-phone');
  });

  test('no errors in the page', () => {
    assert.deepEqual(pageErrors, []);
  });
});
