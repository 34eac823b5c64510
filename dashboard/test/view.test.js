// Unit tests of the page's rendering schedule: the real page markup in happy-dom, with the
// browser's frames, timers and clock driven by the test.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Window } from 'happy-dom';

import { DeviceStore } from '../public/js/store.js';
import { DashboardView } from '../public/js/view.js';

const BODY = /<body>([\s\S]*)<\/body>/.exec(readFileSync(new URL('../public/index.html', import.meta.url), 'utf8'))[1];

const META = {
  kind: 'plug', name: 'Plug', room: 'Room',
  telemetry: { power: { type: 'float', unit: 'W' } },
  controls: { on: { type: 'bool' } },
};

/**
 * The page with `count` devices. Every reading of the clock advances it by 1 ms, so building a
 * card costs at least that and a render stops after about FRAME_BUDGET_MS of them.
 */
function page(count) {
  const dom = new Window({ url: 'https://bridge.test/' });
  dom.document.body.innerHTML = BODY;
  let now = 0;
  const pending = [];
  const win = {
    document: dom.document,
    localStorage: dom.localStorage,
    performance: { now: () => (now += 1) },
    requestAnimationFrame: (run) => pending.push(run),
    setTimeout: (run) => pending.push(run),
    clearTimeout() {},
    setInterval() {},
    IntersectionObserver: class { observe() {} unobserve() {} },
  };
  const store = new DeviceStore();
  const view = new DashboardView(win, store, { send() {}, retry() {} });
  store.setConnection('open');
  store.setBroker('up');
  const devices = Array.from({ length: count }, (_, i) => ({
    id: `plug-${String(i).padStart(4, '0')}`, meta: META, presence: 'online', state: { on: true },
    telemetry: { power: i }, seq: 1, ts: Date.now(),
  }));
  store.applySnapshot({ devices });
  return {
    dom, store, view,
    /** Runs what the page waits for (a frame, or the rest after a render); false if nothing. */
    step() {
      const run = pending.shift();
      run?.();
      return run !== undefined;
    },
    cards: () => dom.document.querySelectorAll('article.card').length,
  };
}

test('a large fleet is built a frame at a time, and completely', () => {
  const p = page(300);
  assert.ok(p.step(), 'a frame was asked for');
  const first = p.cards();
  assert.ok(first > 0 && first < 300, `part of the fleet in the first frame: ${first}`);
  let steps = 1;
  while (p.step()) steps += 1;
  assert.equal(p.cards(), 300);
  assert.ok(steps > 2, `split over frames: ${steps}`);
});

test('renders of everything while a split render is under way do not starve the last devices', () => {
  const p = page(300);
  // The connection drops and comes back on every frame: each change renders every device.
  for (let i = 0; i < 200 && p.cards() < 300; i++) {
    p.store.setConnection(i % 2 ? 'open' : 'down');
    p.step();
  }
  assert.equal(p.cards(), 300, 'every card built');
  assert.ok(p.dom.document.querySelector('article[data-device="plug-0299"]'));
});

test("a group's count follows its devices while their cards are still being built", () => {
  const p = page(300);
  p.view.grouping = 'room';
  p.step();
  const count = () => p.dom.document.querySelector('.group-count')?.textContent;
  assert.ok(p.cards() < 300);
  assert.equal(count(), '300', 'every device of the group, built or not');
  // A device gone before its card was built: no card moves, the count changes.
  p.store.applyDevice({ device: 'plug-0299', removed: true });
  for (let i = 0; i < 3 && count() !== '299'; i++) p.step(); // the rest after a render, a frame
  assert.equal(count(), '299');
  assert.ok(p.cards() < 299, 'while cards are still being built');
  while (p.step());
  assert.equal(p.cards(), 299);
  assert.equal(count(), '299');
});
