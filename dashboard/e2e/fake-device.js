// A device of a kind the dashboard has never seen (an aquarium), written against the MQTT
// contract only. It refuses heater targets above 28 °C although its meta allows up to 30, so
// the browser test can see a command the device itself rejects, with the device's reason.

export const AQUARIUM_ID = 'aquarium-1';
export const HEATER_LIMIT = 28;

export const AQUARIUM_META = {
  kind: 'aquarium',
  name: 'Reef tank',
  room: 'Living room',
  telemetry: {
    water_temp: { type: 'float', unit: '°C', min: 15, max: 35 },
    ph: { type: 'float', min: 0, max: 14 },
    pump_rpm: { type: 'int', unit: 'rpm', min: 0, max: 3000 },
    filter: { type: 'enum', choices: ['clean', 'dirty'] },
  },
  controls: {
    pump: { type: 'bool' },
    heater_target: { type: 'float', unit: '°C', min: 20, max: 30, step: 0.5 },
    light_mode: { type: 'enum', choices: ['day', 'dusk', 'night'] },
    feed_grams: { type: 'int', unit: 'g' },
    note: { type: 'string' },
  },
  actions: ['set'],
};

/**
 * Runs the aquarium on a connected MQTT client (its certificate's CN must be `AQUARIUM_ID`).
 * Returns `{state, stop}`; `state` is the device's own view of its controls.
 */
export async function runAquarium(client, { prefix = 'iot', intervalMs = 300 } = {}) {
  const base = `${prefix}/${AQUARIUM_ID}`;
  const state = { pump: true, heater_target: 25, light_mode: 'day', feed_grams: 2, note: '' };
  const publish = (topic, payload, retain = false) =>
    client.publishAsync(`${base}/${topic}`, typeof payload === 'string' ? payload : JSON.stringify(payload), { qos: 1, retain });

  const announce = async () => {
    await publish('meta', AQUARIUM_META, true);
    await publish('state', state, true);
    await publish('status', 'online', true);
  };
  client.on('connect', () => { announce().catch(() => {}); });
  await client.subscribeAsync(`${base}/cmd`, { qos: 1 });
  client.on('message', (topic, payload) => {
    if (topic !== `${base}/cmd`) return;
    let cmd;
    try {
      cmd = JSON.parse(payload.toString());
    } catch {
      return;
    }
    const reply = (ok, extra) => publish('ack', { id: cmd.id, ok, ...extra }).catch(() => {});
    const error = check(cmd);
    if (error) {
      reply(false, { error });
      return;
    }
    Object.assign(state, cmd.params);
    // State before ack, as the contract suggests: whoever sees the ack can read the new state.
    publish('state', state, true).then(() => reply(true, { result: state }), () => {});
  });
  await announce();

  let tick = 0;
  const timer = setInterval(() => {
    tick += 1;
    const data = {
      water_temp: Number((state.heater_target - 0.4 + Math.sin(tick / 5) * 0.3).toFixed(2)),
      ph: Number((8.1 + Math.sin(tick / 7) * 0.05).toFixed(3)),
      pump_rpm: state.pump ? 1800 + (tick % 7) * 10 : 0,
      filter: tick % 50 < 45 ? 'clean' : 'dirty',
      ts: Date.now(),
    };
    publish('telemetry', data).catch(() => {});
  }, intervalMs);

  return {
    state,
    stop: () => clearInterval(timer),
  };
}

function check(cmd) {
  if (cmd.action !== 'set') return `unknown action ${cmd.action}`;
  const params = cmd.params ?? {};
  for (const [name, value] of Object.entries(params)) {
    const spec = AQUARIUM_META.controls[name];
    if (!spec) return `unknown control ${name}`;
    if (spec.type === 'bool' && typeof value !== 'boolean') return `${name} must be true or false`;
    if (spec.type === 'float' && typeof value !== 'number') return `${name} must be a number`;
    if (spec.type === 'int' && !Number.isInteger(value)) return `${name} must be a whole number`;
    if (spec.type === 'enum' && !spec.choices.includes(value)) return `${name} must be one of ${spec.choices.join(', ')}`;
  }
  if (typeof params.heater_target === 'number' && params.heater_target > HEATER_LIMIT) {
    return `heater target above ${HEATER_LIMIT} °C is unsafe for the fish`;
  }
  return null;
}
