// The real stack for the browser tests: dev certificates, Mosquitto with the shipped config, the
// bridge and simulated devices, each on a free local port, all stopped again at the end.

import { spawn } from 'node:child_process';
import { createWriteStream, rmSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';

export const REPO = fileURLToPath(new URL('../../', import.meta.url));
export const RESULTS = fileURLToPath(new URL('../test-results/', import.meta.url));
const BIN = path.join(process.env.CARGO_TARGET_DIR ?? path.join(REPO, 'target'), 'debug');
const HOST = '127.0.0.1';

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns something truthy, or fails with `what` after `timeoutMs`. */
export async function waitFor(what, check, { timeoutMs = 15000, everyMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(everyMs);
  }
}

/** A port nobody listens on right now (the kernel picks it). */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, HOST, () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function tcpOpen(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, HOST);
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

/** Mosquitto drops root for its own user: everything it reads must be readable by others. */
async function openUp(dir) {
  await chmod(dir, 0o755);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) await openUp(p);
    else await chmod(p, 0o644);
  }
}

export class Stack {
  constructor() {
    this.procs = new Map();
    this.clients = [];
    this.logDir = path.join(RESULTS, 'logs');
    // Whatever happens to the test process (a crash, Ctrl-C, the runner's timeout), no broker,
    // bridge or fleet outlives it.
    this.onExit = () => {
      for (const child of this.procs.values()) child.kill('SIGKILL');
      if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    };
    process.once('exit', this.onExit);
    for (const signal of ['SIGINT', 'SIGTERM']) {
      process.once(signal, () => {
        this.onExit();
        process.exit(130);
      });
    }
  }

  /**
   * Certificates, broker, bridge and a fleet (8 devices sending every 200 ms unless told; a
   * `connectRate` paces how many connect per second); throws (after cleaning up) if any fails.
   */
  static async start({ devices = [], fleet = 8, interval = '200ms', connectRate } = {}) {
    const stack = new Stack();
    try {
      await stack.init(devices);
      await stack.startBroker();
      await stack.startBridge();
      const pace = connectRate ? ['--connect-rate', String(connectRate)] : [];
      await stack.startFleet('fleet', ['--count', String(fleet), ...pace], { interval });
      return stack;
    } catch (e) {
      await stack.stop();
      throw e;
    }
  }

  async init(devices) {
    await mkdir(this.logDir, { recursive: true });
    this.dir = await mkdtemp(path.join(os.tmpdir(), 'iot-dashboard-e2e-'));
    this.certs = path.join(this.dir, 'certs');
    await this.run(path.join(BIN, 'iot-certs'), ['--out', this.certs, 'init', '--user', 'tester', ...devices.flatMap((d) => ['--device', d])]);
    await openUp(this.dir);
    this.brokerPort = await freePort();
    this.bridgePort = await freePort();
    this.origin = `https://${HOST}:${this.bridgePort}`;
  }

  cert(name) {
    return path.join(this.certs, name);
  }

  /** Runs a short command to completion; rejects with its output when it fails. */
  run(cmd, args) {
    return new Promise((resolve, reject) => {
      const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d) => { out += d; });
      child.stderr.on('data', (d) => { out += d; });
      child.on('error', reject);
      child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${path.basename(cmd)} exited with ${code}:\n${out}`))));
    });
  }

  /** Starts a long-running process whose output goes to test-results/logs/NAME.log. */
  spawn(name, cmd, args) {
    const log = createWriteStream(path.join(this.logDir, `${name}.log`), { flags: 'a' });
    log.write(`\n=== ${new Date().toISOString()} ${cmd} ${args.join(' ')}\n`);
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info' } });
    child.stdout.pipe(log, { end: false });
    child.stderr.pipe(log, { end: false });
    child.exited = new Promise((resolve) => child.on('exit', (code, signal) => { log.end(); resolve({ code, signal }); }));
    child.on('error', (e) => log.write(`spawn failed: ${e.message}\n`));
    this.procs.set(name, child);
    return child;
  }

  /** Sends `signal` to process `name` and waits until it has exited. */
  async kill(name, signal = 'SIGTERM', timeoutMs = 10000) {
    const child = this.procs.get(name);
    if (!child) return;
    this.procs.delete(name);
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    await child.exited;
    clearTimeout(timer);
  }

  async startBroker() {
    const shipped = await readFile(path.join(REPO, 'mosquitto', 'mosquitto.conf'), 'utf8');
    const confDir = path.join(this.dir, 'mosquitto');
    await mkdir(confDir);
    await copyFile(path.join(REPO, 'mosquitto', 'acl'), path.join(confDir, 'acl'));
    if (!/^listener 8883$/m.test(shipped)) throw new Error('mosquitto.conf no longer has the `listener 8883` line the tests replace');
    const conf = shipped
      .replace(/^listener 8883$/m, `listener ${this.brokerPort} ${HOST}`)
      .replaceAll('/mosquitto/certs/', `${this.certs}/`)
      .replaceAll('/mosquitto/config/', `${confDir}/`);
    const file = path.join(confDir, 'mosquitto.conf');
    await writeFile(file, conf);
    await openUp(confDir);
    const child = this.spawn('mosquitto', 'mosquitto', ['-c', file]);
    await waitFor('Mosquitto to listen', async () => {
      if (child.exitCode !== null) throw new Error('mosquitto exited; see test-results/logs/mosquitto.log');
      return tcpOpen(this.brokerPort);
    });
  }

  async startBridge() {
    const child = this.spawn('bridge', path.join(BIN, 'iot-bridge'), [
      '--dev-certs', this.certs,
      '--broker-host', HOST,
      '--broker-port', String(this.brokerPort),
      '--listen', `${HOST}:${this.bridgePort}`,
    ]);
    await waitFor('the bridge to be ready (broker link up)', async () => {
      if (child.exitCode !== null) throw new Error('iot-bridge exited; see test-results/logs/bridge.log');
      return (await this.get('/readyz')).status === 200;
    }, { timeoutMs: 20000 });
  }

  async restartBridge() {
    await this.kill('bridge', 'SIGTERM');
    await this.startBridge();
  }

  async startFleet(name, args, { interval = '200ms' } = {}) {
    const child = this.spawn(name, path.join(BIN, 'device-sim'), [
      'fleet',
      '--broker', `${HOST}:${this.brokerPort}`,
      '--ca', this.cert('ca.pem'),
      '--ca-key', this.cert('ca.key'),
      '--interval', interval,
      ...args,
    ]);
    await sleep(200);
    if (child.exitCode !== null) throw new Error(`device-sim ${name} exited; see test-results/logs/${name}.log`);
    return child;
  }

  /** The bridge's count of devices with this presence, from /metrics. */
  async devicesAt(presence) {
    const { body } = await this.get('/metrics');
    const found = new RegExp(`^iotbridge_devices\\{presence="${presence}"\\} (\\d+)$`, 'm').exec(body);
    return found ? Number(found[1]) : 0;
  }

  /** An HTTPS GET to the bridge with the test user's certificate. */
  async get(pathname) {
    const [ca, cert, key] = await Promise.all(['ca.pem', 'users/tester.pem', 'users/tester.key'].map((f) => readFile(this.cert(f))));
    return new Promise((resolve, reject) => {
      const req = https.get({ host: HOST, port: this.bridgePort, path: pathname, ca, cert, key, servername: 'localhost', timeout: 2000 }, (res) => {
        let body = '';
        res.on('data', (d) => { body += d; });
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', reject);
    });
  }

  /** An MQTT client with certificate `who` (`bridge-client` or `devices/ID`); closed by `stop`. */
  async mqtt(who, clientId, options = {}) {
    const [ca, cert, key] = await Promise.all([this.cert('ca.pem'), this.cert(`${who}.pem`), this.cert(`${who}.key`)].map((f) => readFile(f)));
    const client = mqtt.connect(`mqtts://${HOST}:${this.brokerPort}`, {
      ca, cert, key, clientId, servername: 'localhost', reconnectPeriod: 500, connectTimeout: 5000, ...options,
    });
    this.clients.push(client);
    await new Promise((resolve, reject) => {
      client.once('connect', resolve);
      client.once('error', reject);
    });
    return client;
  }

  /** Stops everything that is still running and removes the temporary folder. Never throws. */
  async stop() {
    await Promise.allSettled(this.clients.map((c) => c.endAsync(true)));
    this.clients = [];
    // Devices first (their `offline` goes out cleanly), then the bridge, then the broker.
    const order = [...this.procs.keys()].sort((a, b) => rank(a) - rank(b));
    for (const name of order) await this.kill(name, 'SIGTERM', 5000).catch(() => {});
    process.removeListener('exit', this.onExit);
    if (this.dir && (await stat(this.dir).catch(() => null))) await rm(this.dir, { recursive: true, force: true });
  }
}

function rank(name) {
  return name === 'mosquitto' ? 2 : name === 'bridge' ? 1 : 0;
}
