// The page: header status, banners, the find toolbar and the grouped grid of device cards.
// Renders from the store once per animation frame at most, a frame's worth of cards at a time;
// cards are kept and updated in place.

import { DeviceCard, metaSignature, CONDITION_LABELS } from './card.js';
import { setAttr, setProp } from './controls.js';
import { GROUPINGS, groupDevices, matches } from './finder.js';
import { SERIES_LENGTH } from './store.js';

const GROUP_KEY = 'iot-dashboard.group';
/** Time a render may spend building and updating cards before it leaves the rest to the next frame. */
const FRAME_BUDGET_MS = 25;
/** Cards that may enter a grid in one frame (see `layout`). */
const ENTER_PER_FRAME = 100;
/** From this many devices, cards off screen skip rendering (see `.groups[data-many]`). */
const MANY_CARDS = 300;

/**
 * Makes `children` the element children of `parent`, in this order, moving only what is out of
 * place. A node moved in the DOM loses the focus inside it, and with it whatever the person types
 * next, so the child holding the focus stays where it is and the others are placed around it.
 */
export function placeChildren(parent, children) {
  const wanted = new Set(children);
  for (const node of [...parent.children]) if (!wanted.has(node)) node.remove();
  const active = parent.ownerDocument.activeElement;
  const pinned = children.find((c) => c.parentNode === parent && c.contains(active));
  let next = parent.firstElementChild;
  for (const child of children) {
    if (child === pinned) {
      // Everything still between here and the pinned child belongs after it: out of its way.
      while (next !== pinned) {
        const later = next;
        next = next.nextElementSibling;
        parent.append(later);
      }
    }
    if (child === next) next = next.nextElementSibling;
    else parent.insertBefore(child, next);
  }
}

export class DashboardView {
  /**
   * @param {Window} win
   * @param {import('./store.js').DeviceStore} store
   * @param {{send: (device: string, params: object) => void, retry: () => void}} actions
   */
  constructor(win, store, actions) {
    this.win = win;
    this.doc = win.document;
    this.store = store;
    this.actions = actions;
    this.cards = new Map();
    /** Group key -> {el, grid, count} of the sections on the page. */
    this.sections = new Map();
    this.layoutKey = '';
    this.frame = null;
    /** No render before this (performance.now()): see `schedule`. */
    this.restUntil = 0;
    this.retryAt = null;
    this.ready = false;
    this.baseTitle = this.doc.title;

    const $ = (id) => this.doc.getElementById(id);
    this.ui = {
      pill: $('conn-pill'), pillText: $('conn-text'),
      connBanner: $('banner-connection'), connCountdown: $('conn-countdown'), retry: $('retry-now'),
      brokerBanner: $('banner-broker'),
      filter: $('filter'), summary: $('summary'), groups: $('groups'), empty: $('empty'),
      identity: $('identity'), server: $('server'), notice: $('notice'),
    };
    this.query = this.ui.filter.value;
    this.grouping = this.loadGrouping();
    for (const radio of this.doc.querySelectorAll('input[name="group"]')) {
      radio.checked = radio.value === this.grouping;
      radio.addEventListener('change', () => {
        if (!radio.checked) return;
        this.grouping = radio.value;
        this.saveGrouping();
        // Which cards go where changes, not what they show.
        this.schedule(new Set());
      });
    }
    this.ui.filter.addEventListener('input', () => {
      this.query = this.ui.filter.value;
      this.schedule(new Set());
    });
    this.ui.retry.addEventListener('click', () => this.actions.retry());
    /** Ids of the cards on or near the screen: the clock rewrites only their ages. */
    this.onScreen = new Set();
    this.sightings = new win.IntersectionObserver((entries) => this.sighted(entries), { rootMargin: '200px 0px' });
    // The devices to render at the next frame, in order (see `schedule`).
    this.dirty = new Set();
    store.onChange((ids) => this.schedule(ids));
    win.setInterval(() => this.tick(), 1000);
  }

  /**
   * What moves with the clock alone: ages ("3 s ago") and the reconnect countdown are rewritten
   * in place, and a device that turned stale for want of data is rendered like any changed one.
   * Everything else waits for a message: with a thousand cards, rendering them all each second
   * was most of the page's work.
   */
  tick() {
    const now = Date.now();
    this.renderStatus(now);
    const turned = new Set();
    for (const [id, card] of this.cards) {
      const d = this.store.devices.get(id);
      if (!d) continue;
      const { status, reason } = this.store.condition(d, now);
      if (status !== card.condition.status || reason !== card.condition.reason) turned.add(id);
      // Each rewritten age is a card to lay out again: thousands a second would be most of
      // the page's work. Those off screen catch up when they come into view.
      else if (this.onScreen.has(id)) card.renderAge(d, now);
    }
    if (turned.size > 0) this.schedule(turned);
  }

  /** Cards coming into view (their ages up to date at once) or going out of it. */
  sighted(entries) {
    const now = Date.now();
    for (const { target, isIntersecting } of entries) {
      const id = target.dataset.device;
      // News of a card since replaced or removed.
      if (this.cards.get(id)?.el !== target) continue;
      if (!isIntersecting) {
        this.onScreen.delete(id);
        continue;
      }
      this.onScreen.add(id);
      const d = this.store.devices.get(id);
      if (d) this.cards.get(id).renderAge(d, now);
    }
  }

  loadGrouping() {
    try {
      const saved = this.win.localStorage.getItem(GROUP_KEY);
      return GROUPINGS.includes(saved) ? saved : 'none';
    } catch {
      return 'none';
    }
  }

  saveGrouping() {
    try {
      this.win.localStorage.setItem(GROUP_KEY, this.grouping);
    } catch {
      // Storage may be disabled; grouping then lasts for this visit only.
    }
  }

  /** Renders `ids` (null: every device) at the next frame, after what is already waiting. */
  schedule(ids = null) {
    // Devices left over from a split render stay first: starting over from the top of the list
    // on every full render (the connection going up and down) would starve the last ones.
    for (const id of ids ?? this.store.list().map((d) => d.id)) this.dirty.add(id);
    if (this.frame !== null) return;
    const run = () => {
      this.frame = null;
      const dirty = this.dirty;
      this.dirty = new Set();
      const started = this.win.performance.now();
      const left = this.render(dirty);
      // What a render costs includes the layout it causes (done now instead of before the
      // paint, so not twice). The page then gets at least as long for everything else (typing,
      // scrolling, the messages coming in) before the next render: with thousands of cards and
      // telemetry for some of them in every frame, renders would otherwise take it all.
      if (!this.doc.hidden) void this.doc.body.offsetHeight;
      this.restUntil = this.win.performance.now() * 2 - started;
      if (left !== null) this.schedule(left);
    };
    // A hidden tab gets no animation frames; a timer keeps it current for when it is shown.
    const rest = this.restUntil - this.win.performance.now();
    if (this.doc.hidden) this.frame = this.win.setTimeout(run, 250);
    else if (rest > 0) {
      this.frame = this.win.setTimeout(() => {
        // Hidden meanwhile: no animation frame would come.
        if (this.doc.hidden) run();
        else this.frame = this.win.requestAnimationFrame(run);
      }, rest);
    }
    else this.frame = this.win.requestAnimationFrame(run);
  }

  welcome(msg) {
    this.ui.identity.textContent = msg.identity ?? '';
    this.ui.server.textContent = msg.server ?? '';
  }

  connection(evt) {
    this.retryAt = evt.state === 'down' ? evt.retryAt : null;
    // The banner and its countdown; what it means for the cards comes from the store.
    this.schedule(new Set());
  }

  notify(text) {
    this.ui.notice.textContent = text;
    this.ui.notice.hidden = !text;
    this.win.clearTimeout(this.noticeTimer);
    if (text) this.noticeTimer = this.win.setTimeout(() => this.notify(''), 8000);
  }

  /**
   * Renders the devices in `dirty` (null: all of them), as much as fits in a frame. Returns the
   * devices left for the next frame (a Set, possibly empty with cards still to place), or null
   * when everything is done.
   */
  render(dirty = null) {
    const now = Date.now();
    this.renderStatus(now);
    const devices = this.store.list();
    const conditions = new Map(devices.map((d) => [d.id, this.store.condition(d, now)]));

    const shown = devices.filter((d) => matches(d, this.query, CONDITION_LABELS[conditions.get(d.id).status]));
    const groups = groupDevices(shown, this.grouping);
    for (const [id, card] of this.cards) {
      if (!this.store.devices.has(id)) {
        this.dropCard(card);
        this.cards.delete(id);
      }
    }
    // Cards are built and updated for a frame's worth of time, the rest in the next frames:
    // thousands at once (a first snapshot, a reconnect) would freeze the page for seconds. Those
    // left over come first next time (a Set keeps its order), so a steady stream of telemetry
    // for some devices cannot starve the others.
    const clock = this.win.performance;
    const until = clock.now() + FRAME_BUDGET_MS;
    const later = new Set();
    for (const id of dirty ?? devices.map((d) => d.id)) {
      const d = this.store.devices.get(id);
      if (!d) continue;
      if (clock.now() > until) {
        later.add(id);
        continue;
      }
      let card = this.cards.get(id);
      if (card && card.signature !== metaSignature(d.meta)) {
        this.dropCard(card);
        card = null;
      }
      if (!card) {
        card = new DeviceCard(this.doc, d, { send: this.actions.send, seriesLength: SERIES_LENGTH });
        this.cards.set(id, card);
        this.sightings.observe(card.el);
      }
      card.update(d, conditions.get(id), now, this.store.canControl(id));
    }
    const held = this.layout(groups);
    this.renderSummary(devices, shown, conditions);
    return later.size > 0 || held ? later : null;
  }

  dropCard(card) {
    this.sightings.unobserve(card.el);
    this.onScreen.delete(card.id);
    card.el.remove();
    this.layoutKey = '';
  }

  /**
   * Re-arranges cards only when the grouping or the set of placed cards changed. A card entering
   * a grid (built, shown again, or moved to another group) is laid out from scratch, so at most
   * ENTER_PER_FRAME enter in one frame and the others in the next: thousands at once (a filter
   * cleared, a new grouping) would freeze the page for seconds. Returns whether some were held.
   */
  layout(groups) {
    let room = ENTER_PER_FRAME;
    let held = false;
    const placed = [];
    for (const g of groups) {
      const grid = this.sections.get(g.key)?.grid;
      const cards = [];
      for (const d of g.devices) {
        // A card not built yet (see `render`) is placed once it is.
        const card = this.cards.get(d.id);
        if (!card) continue;
        if (card.el.parentNode !== grid) {
          if (room === 0) {
            held = true;
            continue;
          }
          room -= 1;
        }
        cards.push(card);
      }
      if (cards.length > 0) placed.push({ g, cards });
    }
    const key = `${this.grouping}|${placed.map(({ g, cards }) => `${g.key}:${cards.map((c) => c.id).join(',')}`).join('|')}`;
    if (key !== this.layoutKey) {
      this.layoutKey = key;
      const sections = new Map();
      for (const { g, cards } of placed) {
        const s = this.sections.get(g.key) ?? this.section(g);
        placeChildren(s.grid, cards.map((c) => c.el));
        sections.set(g.key, s);
      }
      this.sections = sections;
      this.ui.groups.dataset.grouping = this.grouping;
      this.ui.groups.toggleAttribute('data-many', this.cards.size >= MANY_CARDS);
      placeChildren(this.ui.groups, [...sections.values()].map((s) => s.el));
    }
    // A group counts every device it shows, built or not: set even when no card moves.
    for (const { g } of placed) {
      const count = this.sections.get(g.key).count;
      if (count) setProp(count, 'textContent', String(g.devices.length));
    }
    return held;
  }

  /** A group's section: heading and grid, kept across layouts so its cards need not move. */
  section(g) {
    const doc = this.doc;
    const el = doc.createElement('section');
    el.className = 'group';
    const grid = doc.createElement('div');
    grid.className = 'grid';
    let count = null;
    if (this.grouping !== 'none') {
      const h = doc.createElement('h2');
      h.className = 'group-title';
      h.id = `group-${g.key.replace(/[^A-Za-z0-9_-]/g, '_')}`;
      h.textContent = g.label;
      count = doc.createElement('span');
      count.className = 'group-count';
      h.append(count);
      el.setAttribute('aria-labelledby', h.id);
      el.append(h);
    } else {
      // Keeps the heading outline h1 > h2 > h3 for screen-reader navigation.
      const h = doc.createElement('h2');
      h.className = 'vh';
      h.textContent = 'Devices';
      el.append(h);
      el.setAttribute('aria-label', 'Devices');
    }
    el.append(grid);
    return { el, grid, count };
  }

  renderSummary(devices, shown, conditions) {
    const counts = { online: 0, offline: 0, stale: 0, unknown: 0 };
    for (const c of conditions.values()) counts[c.status] = (counts[c.status] ?? 0) + 1;
    const parts = [`${devices.length} ${devices.length === 1 ? 'device' : 'devices'}`];
    for (const k of ['online', 'offline', 'stale', 'unknown']) if (counts[k]) parts.push(`${counts[k]} ${k}`);
    if (shown.length !== devices.length) parts.push(`${shown.length} shown`);
    const text = parts.join(' · ');
    if (this.ui.summary.textContent !== text) this.ui.summary.textContent = text;

    const waiting = !this.ready && this.store.connection !== 'open';
    let empty = '';
    if (waiting) empty = 'Connecting to the bridge…';
    else if (devices.length === 0) empty = 'No devices yet. A device appears here as soon as it publishes its meta to the broker.';
    else if (shown.length === 0) empty = `No device matches “${this.query.trim()}”.`;
    if (this.ui.empty.textContent !== empty) this.ui.empty.textContent = empty;
    setProp(this.ui.empty, 'hidden', !empty);
    setAttr(this.ui.groups, 'aria-busy', String(waiting));
  }

  renderStatus(now) {
    const conn = this.store.connection;
    if (conn === 'open') this.ready = true;
    const broker = this.store.broker;
    let state;
    let text;
    if (conn === 'open' && broker === 'down') [state, text] = ['bad', 'Broker link down'];
    else if (conn === 'open') [state, text] = ['ok', 'Live'];
    else if (conn === 'down') [state, text] = ['warn', this.ready ? 'Reconnecting…' : 'No connection'];
    else [state, text] = ['idle', this.ready ? 'Reconnecting…' : 'Connecting…'];
    setAttr(this.ui.pill, 'data-state', state);
    if (this.ui.pillText.textContent !== text) this.ui.pillText.textContent = text;

    const connDown = conn === 'down' || (conn === 'connecting' && this.ready);
    setProp(this.ui.connBanner, 'hidden', !connDown);
    let countdown = 'Connecting…';
    if (conn === 'down' && this.retryAt !== null) {
      const s = Math.max(0, Math.ceil((this.retryAt - now) / 1000));
      countdown = s > 0 ? `Retrying in ${s} s.` : 'Retrying…';
    }
    if (this.ui.connCountdown.textContent !== countdown) this.ui.connCountdown.textContent = countdown;
    setProp(this.ui.brokerBanner, 'hidden', !(conn === 'open' && broker === 'down'));

    const title = state === 'ok' ? this.baseTitle : `(${text}) ${this.baseTitle}`;
    if (this.doc.title !== title) this.doc.title = title;
  }
}
