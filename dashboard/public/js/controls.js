// Controls generated from `meta.controls`: a switch for bool, a slider with -/+ for a number with
// a range, a number field without one, a select for enum, a text field for string.
//
// Every control shows the device's *reported* value. While the person is choosing a value, or a
// command for it is under way, the widget holds that chosen value and says so ("80 % → 60 %");
// once the command ends, whatever its outcome, the widget returns to the reported value, so it
// never claims a state the device did not report.

import { humanize, snapToStep, withUnit } from './format.js';

/** How long "Done" stays under a control after a command succeeded. */
export const OK_VISIBLE_MS = 3000;
/** Slider and -/+ changes wait this long for more before a command goes out. */
export const SETTLE_MS = 350;

let nextId = 1;
const uid = (prefix) => `${prefix}-${nextId++}`;

/** Text under a control for the latest command on it; '' when there is nothing to say. */
export function commandText(cmd, spec, now) {
  if (!cmd) return '';
  const target = withUnit(cmd.target, { ...spec, control: true });
  switch (cmd.status) {
    case 'pending':
      return cmd.stage === 'sent' ? `Sent ${target}, waiting for the device…` : `Sending ${target}…`;
    case 'ok':
      return now - cmd.at < OK_VISIBLE_MS ? 'Done' : '';
    case 'rejected':
      return `Rejected: ${cmd.error || 'the device refused the command'}`;
    case 'offline':
      return cmd.error ? `Not sent: ${cmd.error}` : 'Not delivered: the device or the broker link is offline';
    case 'timeout':
      return cmd.error ? `Timed out: ${cmd.error}` : 'Timed out: no answer from the device';
    case 'forbidden':
      return 'Not allowed: your certificate may not control this device';
    case 'rate_limited':
      return 'Not sent: too many commands, try again in a moment';
    case 'lost':
      return 'Connection lost before the answer; showing the reported state';
    case 'error':
      return `Failed: ${cmd.error || 'the bridge refused the command'}`;
    default:
      return cmd.status;
  }
}

/** Sets an attribute only when it changes: writing the same value again still costs a layout. */
export function setAttr(node, name, value) {
  if (node.getAttribute(name) !== value) node.setAttribute(name, value);
}

/** The same for a property (`hidden`, `disabled`). */
export function setProp(node, name, value) {
  if (node[name] !== value) node[name] = value;
}

function el(doc, tag, attrs = {}, text) {
  const node = doc.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  }
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Shared parts: label, reported value, command status line, and the draft/settle logic. */
class Control {
  constructor(doc, { name, spec, send, deviceName }) {
    this.doc = doc;
    this.name = name;
    this.spec = { ...spec, control: true };
    this.send = send;
    this.label = humanize(name);
    this.deviceName = deviceName;
    this.inputId = uid('ctl');
    this.labelId = uid('lbl');
    this.statusId = uid('st');
    this.draft = null;
    this.timer = null;
    this.doneTimer = null;
    /** A finger, mouse or key is still moving the control: leave the draft alone. */
    this.holding = false;
    this.reported = undefined;
    this.el = el(doc, 'div', { class: `control control-${spec.type ?? 'other'}`, 'data-control': name });
    this.status = el(doc, 'p', { class: 'cmd-status', id: this.statusId, role: 'status', 'aria-live': 'polite' });
  }

  /**
   * The accessible name: the visible label first (so voice control finds it by what it sees),
   * then the device, for screen-reader users moving from control to control across cards.
   */
  accessibleName() {
    return `${this.label}${this.suffix()}`;
  }

  head(withOutput = true) {
    const head = el(this.doc, 'div', { class: 'control-head' });
    head.append(el(this.doc, 'label', { id: this.labelId, for: this.inputId }, this.label));
    if (withOutput) {
      this.output = el(this.doc, 'output', { class: 'reported', for: this.inputId });
      head.append(this.output);
    }
    return head;
  }

  /** Turns every input of the control on or off (an identity without the right to control). */
  setEnabled(enabled) {
    if (this.enabled === enabled) return;
    this.enabled = enabled;
    for (const node of this.el.querySelectorAll('button, input, select')) node.disabled = !enabled;
  }

  /** Sends `value` now; the draft stays until that command ends. */
  commit(value) {
    this.cancelSettle();
    this.draft = value;
    this.send({ [this.name]: value });
  }

  /** Sends `value` once the person has stopped changing it for a moment. */
  settle(value) {
    this.draft = value;
    this.cancelSettle();
    this.timer = setTimeout(() => {
      this.timer = null;
      this.commit(value);
    }, SETTLE_MS);
  }

  cancelSettle() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Called on every render with the reported value and the latest command on this control. */
  update(reported, cmd, now) {
    this.reported = reported;
    const busy = this.holding || this.timer !== null || cmd?.status === 'pending';
    if (!busy) this.draft = null;
    this.render(busy);
    const text = commandText(cmd, this.spec, now);
    this.showStatus(text, cmd?.status);
    // "Done" is the one text that ends with time alone, when no render may be due: a timer ends it.
    clearTimeout(this.doneTimer);
    if (text && cmd.status === 'ok') this.doneTimer = setTimeout(() => this.showStatus('', ''), OK_VISIBLE_MS - (now - cmd.at));
    this.el.classList.toggle('is-pending', busy);
  }

  showStatus(text, status) {
    if (this.status.textContent !== text) this.status.textContent = text;
    setAttr(this.status, 'data-status', text ? status : '');
  }

  suffix() {
    return this.deviceName ? `, ${this.deviceName}` : '';
  }

  reportedText() {
    return withUnit(this.reported, this.spec);
  }

  /** "40 %" or, while a different value is on its way, "40 % → 60 %". */
  outputText() {
    const now = this.reportedText();
    if (this.draft === null || this.draft === this.reported) return now;
    return `${now} → ${withUnit(this.draft, this.spec)}`;
  }
}

class SwitchControl extends Control {
  build() {
    const doc = this.doc;
    this.el.append(el(doc, 'span', { class: 'control-label', id: this.labelId, 'aria-hidden': 'true' }, this.label));
    this.button = el(doc, 'button', {
      type: 'button', role: 'switch', id: this.inputId, class: 'switch',
      'aria-checked': 'false', 'aria-label': this.accessibleName(), 'aria-describedby': this.statusId,
    });
    const track = el(doc, 'span', { class: 'switch-track', 'aria-hidden': 'true' });
    track.append(el(doc, 'span', { class: 'switch-thumb' }));
    this.text = el(doc, 'span', { class: 'switch-text', 'aria-hidden': 'true' });
    this.button.append(this.text, track);
    this.button.addEventListener('click', () => {
      const current = this.draft ?? this.reported === true;
      this.commit(!current);
    });
    this.el.append(this.button, this.status);
    return this;
  }

  render(busy) {
    const on = this.reported === true;
    setAttr(this.button, 'aria-checked', String(on));
    setAttr(this.button, 'data-unknown', String(typeof this.reported !== 'boolean'));
    setAttr(this.button, 'aria-busy', String(busy));
    let text = typeof this.reported === 'boolean' ? (on ? 'On' : 'Off') : 'Unknown';
    if (busy && this.draft !== null && this.draft !== this.reported) text = this.draft ? 'Turning on…' : 'Turning off…';
    if (this.text.textContent !== text) this.text.textContent = text;
  }
}

class RangeControl extends Control {
  build() {
    const doc = this.doc;
    const { min, max } = this.spec;
    this.step = typeof this.spec.step === 'number' && this.spec.step > 0
      ? this.spec.step
      : this.spec.type === 'int' ? 1 : Number(((max - min) / 100).toPrecision(2));
    this.el.append(this.head());
    const row = el(doc, 'div', { class: 'range-row' });
    this.minus = el(doc, 'button', { type: 'button', class: 'step-btn', 'aria-label': `Decrease ${this.label.toLowerCase()}${this.suffix()}` }, '−');
    this.plus = el(doc, 'button', { type: 'button', class: 'step-btn', 'aria-label': `Increase ${this.label.toLowerCase()}${this.suffix()}` }, '+');
    this.input = el(doc, 'input', {
      type: 'range', id: this.inputId, min, max, step: this.step, 'aria-describedby': this.statusId,
      'aria-label': this.accessibleName(),
    });
    // `input` fires while dragging, `change` once the value is let go (per key press for keys).
    this.input.addEventListener('input', () => {
      this.holding = true;
      this.draft = snapToStep(this.input.value, { ...this.spec, step: this.step });
      this.cancelSettle();
      this.render(true);
    });
    this.input.addEventListener('change', () => {
      this.holding = false;
      this.settle(snapToStep(this.input.value, { ...this.spec, step: this.step }));
    });
    // Focus leaving without a `change` (a drag cancelled): nothing is being held any more.
    this.input.addEventListener('blur', () => { this.holding = false; });
    const nudge = (dir) => {
      const from = this.draft ?? (typeof this.reported === 'number' ? this.reported : min);
      const value = snapToStep(from + dir * this.step, { ...this.spec, step: this.step });
      this.settle(value);
      this.render(true);
    };
    this.minus.addEventListener('click', () => nudge(-1));
    this.plus.addEventListener('click', () => nudge(1));
    row.append(this.minus, this.input, this.plus);
    this.el.append(row, this.status);
    return this;
  }

  render() {
    const shown = this.draft ?? (typeof this.reported === 'number' ? this.reported : null);
    // While a draft exists the thumb is where the person put it; afterwards it follows the device.
    const value = shown === null ? String(this.spec.min) : String(shown);
    if (this.input.value !== value) this.input.value = value;
    setAttr(this.input, 'data-unknown', String(shown === null));
    setAttr(this.input, 'aria-valuetext', shown === null ? 'unknown' : withUnit(shown, this.spec));
    const text = this.outputText();
    if (this.output.textContent !== text) this.output.textContent = text;
    const at = shown ?? this.spec.min;
    setProp(this.minus, 'disabled', this.enabled === false || at <= this.spec.min);
    setProp(this.plus, 'disabled', this.enabled === false || at >= this.spec.max);
  }
}

/** A number without a range, or free text: typed, then sent with Enter or the Set button. */
class FieldControl extends Control {
  build() {
    const doc = this.doc;
    const numeric = this.spec.type === 'int' || this.spec.type === 'float';
    this.el.append(this.head());
    const form = el(doc, 'form', { class: 'field-row' });
    this.input = el(doc, 'input', {
      id: this.inputId, 'aria-describedby': this.statusId, 'aria-label': this.accessibleName(), autocomplete: 'off',
      type: numeric ? 'number' : 'text',
      inputmode: numeric ? (this.spec.type === 'int' ? 'numeric' : 'decimal') : undefined,
      step: numeric ? (this.spec.step ?? (this.spec.type === 'int' ? 1 : 'any')) : undefined,
      min: this.spec.min, max: this.spec.max, maxlength: numeric ? undefined : 256,
    });
    const button = el(doc, 'button', { type: 'submit', class: 'set-btn' }, 'Set');
    button.setAttribute('aria-label', `Set ${this.label.toLowerCase()}${this.suffix()}`);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const raw = this.input.value;
      if (numeric) {
        const value = this.spec.type === 'int' ? Math.round(Number(raw)) : Number(raw);
        if (raw.trim() === '' || !Number.isFinite(value)) return;
        this.commit(value);
      } else {
        this.commit(raw);
      }
      this.edited = false;
    });
    this.input.addEventListener('input', () => { this.edited = true; });
    form.append(this.input, button);
    this.el.append(form, this.status);
    return this;
  }

  render() {
    const text = this.outputText();
    if (this.output.textContent !== text) this.output.textContent = text;
    // Never overwrite what the person is typing.
    if (!this.edited && this.doc.activeElement !== this.input) {
      const value = this.reported === undefined || this.reported === null ? '' : String(this.reported);
      if (this.input.value !== value) this.input.value = value;
    }
  }
}

class SelectControl extends Control {
  build() {
    const doc = this.doc;
    this.el.append(this.head(false));
    this.select = el(doc, 'select', { id: this.inputId, 'aria-describedby': this.statusId, 'aria-label': this.accessibleName() });
    this.unknownOption = el(doc, 'option', { value: '', disabled: '' }, 'Unknown');
    this.select.append(this.unknownOption);
    for (const choice of this.spec.choices ?? []) {
      this.select.append(el(doc, 'option', { value: String(choice) }, humanize(choice)));
    }
    this.select.addEventListener('change', () => {
      const choice = (this.spec.choices ?? []).find((c) => String(c) === this.select.value);
      if (choice !== undefined) this.commit(choice);
    });
    this.el.append(this.select, this.status);
    return this;
  }

  render(busy) {
    const shown = this.draft ?? this.reported;
    const known = (this.spec.choices ?? []).some((c) => c === shown);
    setProp(this.unknownOption, 'hidden', known);
    const value = known ? String(shown) : '';
    if (this.select.value !== value) this.select.value = value;
    setAttr(this.select, 'aria-busy', String(busy));
  }
}

/** The control for one entry of `meta.controls`; unknown types fall back to a text field. */
export function createControl(doc, { name, spec, send, deviceName }) {
  const s = spec && typeof spec === 'object' ? spec : {};
  const numeric = s.type === 'int' || s.type === 'float';
  const args = { name, spec: s, send, deviceName };
  if (s.type === 'bool') return new SwitchControl(doc, args).build();
  if (numeric && typeof s.min === 'number' && typeof s.max === 'number' && s.max > s.min) return new RangeControl(doc, args).build();
  if ((s.type === 'enum' || !numeric) && Array.isArray(s.choices) && s.choices.length > 0) return new SelectControl(doc, args).build();
  return new FieldControl(doc, args).build();
}
