// Helpers for the browser tests: start the platform's processes (Redis, `consult`, `sfu`)
// on loopback, drive Debian's Chromium through playwright-core (and its firefox-esr
// through puppeteer-core: firefox.mjs), talk to the REST API, and make sure everything
// started is stopped again, on failure too.
//
// Run inside a private network namespace (scripts/browser-tests does), so that the
// browsers and the SFU only ever see `lo`.

import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import { access, constants, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';
import { launchFirefox } from './firefox.mjs';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const WEB_ROOT = path.join(REPO_ROOT, 'web-client', 'public');
export const CONSULT_BIN = path.resolve(REPO_ROOT, process.env.CONSULT_BIN || 'target/debug/consult');
export const SFU_BIN = path.resolve(REPO_ROOT, process.env.SFU_BIN || 'target/debug/sfu');
/** The impaired link (load-tests), for tests/netns.mjs's impairedNetwork. */
export const IMPAIR_BIN = path.resolve(REPO_ROOT, process.env.IMPAIR_BIN || 'target/debug/impair');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
  '--allow-loopback-in-peer-connection', // without it no candidates are gathered on lo
  '--disable-features=WebRtcHideLocalIpsWithMdns', // plain IPs, no .local names
];

const execFileAsync = promisify(execFile);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// --- processes ----------------------------------------------------------------------------

/** Every child process still running; killed when this process exits, however it exits. */
const running = new Set();
process.on('exit', () => {
  for (const child of running) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** The environment for a child: ours without any CONSULT_* setting, plus `extra`. */
function childEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('CONSULT_')) env[k] = v;
  return { ...env, ...extra };
}

/** A child process whose output is kept (its tail) for diagnostics. */
export class Proc {
  constructor(name, cmd, args, { env = {}, cwd = REPO_ROOT, input, keepStdin = false } = {}) {
    this.name = name;
    this.command = [cmd, ...args].join(' ');
    this.stdout = '';
    this.stderr = '';
    this.exitCode = undefined;
    this.spawnError = null;
    this.child = spawn(cmd, args, { env: childEnv(env), cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    running.add(this.child);
    const keep = (field) => (chunk) => {
      this[field] += chunk.toString();
      if (this[field].length > 2_000_000) this[field] = this[field].slice(-1_000_000);
    };
    this.child.stdout.on('data', keep('stdout'));
    this.child.stderr.on('data', keep('stderr'));
    // PROC_LOG_DIR=dir keeps each process's whole output there (diagnosis of long runs;
    // with RUST_LOG=sfu=debug, the SFU's decisions), one file per process.
    if (process.env.PROC_LOG_DIR) {
      const file = path.join(process.env.PROC_LOG_DIR, `${name.replace(/[^\w.-]+/g, '_')}-${this.child.pid}.log`);
      const out = fs.createWriteStream(file);
      this.child.stdout.pipe(out);
      this.child.stderr.pipe(out);
    }
    this.exited = new Promise((resolve) => {
      this.child.on('error', (e) => {
        this.spawnError = e;
        running.delete(this.child);
        resolve(null);
      });
      this.child.on('exit', (code, signal) => {
        this.exitCode = code ?? signal;
        running.delete(this.child);
        resolve(this.exitCode);
      });
    });
    this.child.stdin.on('error', () => {}); // a child that never reads its input
    if (input !== undefined) this.child.stdin.write(input);
    // Closed unless the caller talks to the process (`keepStdin`: `this.child.stdin`).
    if (!keepStdin) this.child.stdin.end();
  }

  /** Waits for a line of stdout matching `re`; fails if the process ends first. */
  async waitForLine(re, timeoutMs = 20_000) {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const m = this.stdout.match(re);
      if (m) return m;
      if (this.spawnError) throw new Error(`${this.name}: cannot start ${this.command}: ${this.spawnError.message}`);
      if (this.exitCode !== undefined) {
        throw new Error(`${this.name} exited (${this.exitCode}) before printing ${re}\n${this.tail()}`);
      }
      if (Date.now() > end) throw new Error(`${this.name}: no ${re} on stdout within ${timeoutMs} ms\n${this.tail()}`);
      await sleep(20);
    }
  }

  /** Waits for the process to end with status 0. */
  async success() {
    await this.exited;
    if (this.spawnError) throw new Error(`${this.name}: cannot start ${this.command}: ${this.spawnError.message}`);
    if (this.exitCode !== 0) throw new Error(`${this.name} failed (${this.exitCode}): ${this.command}\n${this.tail()}`);
    return this.stdout;
  }

  async stop() {
    if (this.exitCode !== undefined || this.spawnError) return;
    this.child.kill('SIGTERM');
    const done = await Promise.race([this.exited.then(() => true), sleep(5000).then(() => false)]);
    if (!done) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }

  tail(lines = 80) {
    const plain = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');
    const last = (s) => plain(s).trimEnd().split('\n').slice(-lines).join('\n');
    return `--- ${this.name} stdout (tail) ---\n${last(this.stdout)}\n--- ${this.name} stderr (tail) ---\n${last(this.stderr)}`;
  }
}

// --- a test's environment -------------------------------------------------------------------

/** Environments in use, so that the watchdog can print what they saw. */
const activeEnvs = new Set();

/**
 * What one test starts: processes, temporary directories, browser contexts, servers.
 * `cleanup()` stops all of it; `report()` prints what it saw (used on failure).
 */
export class TestEnv {
  constructor(name) {
    this.name = name;
    this.procs = [];
    this.dirs = [];
    this.contexts = [];
    this.servers = [];
    this.pages = new Map(); // label -> page
    this.log = []; // browser console lines and page errors, in order
    this.pageErrors = [];
    activeEnvs.add(this);
  }

  async tmpdir() {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'consult-browser-'));
    this.dirs.push(dir);
    return dir;
  }

  spawn(name, cmd, args, opts) {
    const p = new Proc(name, cmd, args, opts);
    this.procs.push(p);
    return p;
  }

  /** Prints the processes' output and, while the pages are open, their state and messages. */
  async report() {
    console.error(`\n===== ${this.name}: diagnostics =====`);
    for (const [label, page] of this.pages) {
      try {
        const seen = await withTimeout(
          page.evaluate(async () => ({
            state: window.consultCall?.state(),
            stats: await window.consultCall?.stats(),
            messages: window.consultCall?.messages(),
          })),
          3000,
        );
        console.error(`--- page ${label}: state ${JSON.stringify(seen.state)}`);
        console.error(`--- page ${label}: stats ${JSON.stringify(seen.stats)}`);
        console.error(`--- page ${label}: websocket messages\n${formatMessages(seen.messages)}`);
      } catch (e) {
        console.error(`--- page ${label}: cannot read its state: ${e.message}`);
      }
    }
    this.reportSync();
  }

  reportSync() {
    if (this.log.length) console.error(`--- browser console ---\n${this.log.join('\n')}`);
    for (const p of this.procs) console.error(p.tail(200));
  }

  async cleanup() {
    for (const c of this.contexts) await c.close().catch(() => {});
    for (const s of this.servers) s.close();
    for (const p of [...this.procs].reverse()) await p.stop();
    for (const d of this.dirs) await rm(d, { recursive: true, force: true });
    activeEnvs.delete(this);
  }
}

/** Runs `fn(env)` with a fresh environment; prints diagnostics on failure; always cleans up. */
export async function withEnv(name, fn) {
  const env = new TestEnv(name);
  try {
    return await fn(env);
  } catch (e) {
    await env.report();
    throw e;
  } finally {
    await env.cleanup();
  }
}

/**
 * Ends this process with status 3 after `seconds`, printing what the running tests saw:
 * a hung browser or server must not hang CI.
 */
export function watchdog(seconds) {
  setTimeout(() => {
    console.error(`WATCHDOG: ${path.basename(process.argv[1] ?? 'test')} exceeded ${seconds} s`);
    for (const env of activeEnvs) env.reportSync();
    process.exit(3);
  }, seconds * 1000).unref();
}

function withTimeout(promise, ms) {
  return Promise.race([
    promise,
    sleep(ms).then(() => {
      throw new Error(`timed out after ${ms} ms`);
    }),
  ]);
}

function formatMessages(messages = []) {
  if (!messages.length) return '(none)';
  const t0 = messages[0].at;
  return messages
    .map(({ dir, type, at, ...rest }) => {
      const extra = Object.keys(rest).length ? ` ${JSON.stringify(rest)}` : '';
      return `  +${String(at - t0).padStart(6)} ms ${dir === 'in' ? '<-' : '->'} ${type}${extra}`;
    })
    .join('\n');
}

// --- the platform's processes -----------------------------------------------------------------

export async function requireExecutable(file, what) {
  try {
    await access(file, constants.X_OK);
  } catch {
    throw new Error(`${what} not found at ${file} (build it, or set its path in the environment)`);
  }
}

/** A Redis on a private unix socket in `dir`; resolves once it answers PING. */
export async function startRedis(env, dir) {
  const socket = path.join(dir, 'redis.sock');
  const proc = env.spawn('redis', 'redis-server', [
    '--port', '0',
    '--unixsocket', socket,
    '--unixsocketperm', '700',
    '--save', '',
    '--appendonly', 'no',
    '--dir', dir,
  ]);
  const end = Date.now() + 10_000;
  for (;;) {
    if (proc.spawnError) throw new Error(`cannot start redis-server: ${proc.spawnError.message}`);
    if (proc.exitCode !== undefined) throw new Error(`redis-server exited (${proc.exitCode})\n${proc.tail()}`);
    try {
      const { stdout } = await execFileAsync('redis-cli', ['-s', socket, 'PING']);
      if (stdout.trim() === 'PONG') break;
    } catch (e) {
      if (e.code === 'ENOENT') throw new Error('redis-cli not found (install redis-tools)');
    }
    if (Date.now() > end) throw new Error(`redis-server did not answer PING within 10 s\n${proc.tail()}`);
    await sleep(20);
  }
  return { proc, socket, url: `redis+unix://${socket}` };
}

/** The environment that selects consult's store: Redis if `redisUrl`, else SQLite in `dataDir`. */
function storeEnv({ dataDir, redisUrl }) {
  const env = {};
  if (dataDir) env.CONSULT_DATA_DIR = dataDir;
  if (redisUrl) env.CONSULT_REDIS_URL = redisUrl;
  return env;
}

/** Runs a `consult` admin command (`clinic add`, `staff add`, ...); resolves with its stdout. */
export async function consultCli(env, store, args, input) {
  await requireExecutable(CONSULT_BIN, 'consult binary');
  return env.spawn(`consult ${args.slice(0, 2).join(' ')}`, CONSULT_BIN, args, { env: storeEnv(store), input }).success();
}

/**
 * `consult serve` on a free loopback port, serving web-client/public; resolves with its
 * base URL once it listens and (over plain HTTP) serves call.html.
 */
export async function startConsult(env, { dataDir, redisUrl, extraEnv = {} }) {
  await requireExecutable(CONSULT_BIN, 'consult binary');
  const proc = env.spawn('consult', CONSULT_BIN, ['serve'], {
    env: {
      ...storeEnv({ dataDir, redisUrl }),
      CONSULT_LISTEN: '127.0.0.1:0',
      CONSULT_WEB_ROOT: WEB_ROOT,
      ...extraEnv,
    },
  });
  const [, addr, https] = await proc.waitForLine(/consult: listening on (\S+)( \(https\))?/);
  // Serving HTTPS itself (CONSULT_TLS_*): its test certificate is the browsers' to trust.
  if (https) return { proc, url: `https://${addr}` };
  const url = `http://${addr}`;
  const page = await fetch(`${url}/call.html`);
  const type = page.headers.get('content-type') || '';
  await page.arrayBuffer();
  if (!page.ok || !type.includes('text/html')) {
    throw new Error(`consult does not serve web-client/public: GET /call.html gave ${page.status} ${type}`);
  }
  return { proc, url };
}

/** A separate `sfu` process; resolves once it says it has registered in Redis. */
export async function startSfu(env, { redisUrl, nodeId = 'sfu-1', args = [] }) {
  await requireExecutable(SFU_BIN, 'sfu binary');
  const proc = env.spawn(`sfu ${nodeId}`, SFU_BIN, [
    '--redis-url', redisUrl,
    '--node-id', nodeId,
    '--listen', '127.0.0.1:0',
    '--media-ip', '127.0.0.1',
    ...args,
  ]);
  const [, addr] = await proc.waitForLine(/sfu: listening on (\S+)/);
  return { proc, addr };
}

// --- the pages ----------------------------------------------------------------------------------

/** In a page: the staff page's or the patient page's summed getStats figures. */
export const staffStats = () => window.consultStaff?.stats();
export const patientStats = () => window.consultPatient?.stats();

/** Of such figures: video decoded and sound received. */
export const receiving = (x) => x && x.inboundVideo.framesDecoded > 0 && x.inboundAudio.packetsReceived > 0;

/** The browser engines the tests drive: Debian's `chromium` and `firefox-esr`. */
export const ENGINES = ['chromium', 'firefox'];

/**
 * Debian's Chromium (or, with 'firefox', its firefox-esr), headless, with fake camera and
 * microphone. Both give the same page API (see firefox.mjs for Firefox's part of it).
 */
export async function launchBrowser(engine = 'chromium') {
  if (engine === 'firefox') return launchFirefox();
  if (engine !== 'chromium') throw new Error(`unknown browser engine '${engine}' (one of ${ENGINES.join(', ')})`);
  const extra = (process.env.CHROMIUM_EXTRA_ARGS || '').split(' ').filter(Boolean);
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...CHROMIUM_ARGS, ...extra] });
}

/** The engine of a page from launchBrowser's browsers. */
export const engineOf = (page) => page.engine ?? 'chromium';

/** Pages the test is closing: their errors from now on are logged, not counted. */
const closing = new WeakSet();

/** Closes the browser contexts of `pages` (people leaving), as the test means to. */
export async function closePages(...pages) {
  for (const page of pages) closing.add(page);
  await Promise.all(pages.map((page) => page.context().close()));
}

/**
 * Opens call.html with `token` in the fragment, in a new browser context (a separate
 * person); its console and errors go to the environment's log under `label`.
 * `initScript`, if given, runs in the page before its own scripts. Then presses "Turn on
 * camera and microphone", as a person would (the page asks for them only after a press),
 * unless `devices` is false.
 */
export async function openCall(browser, env, origin, token, label, { initScript, devices = true } = {}) {
  const context = await browser.newContext();
  env.contexts.push(context);
  if (initScript) await context.addInitScript(initScript);
  const page = await context.newPage();
  env.pages.set(label, page);
  page.on('console', (m) => env.log.push(`[${label}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => {
    // Closing a page cuts its websocket, which Firefox reports as an error of the page.
    if (!closing.has(page)) env.pageErrors.push(`[${label}] ${e.message}`);
    env.log.push(`[${label}] PAGE ERROR: ${e.stack || e.message}`);
  });
  await page.goto(`${origin}/call.html#token=${encodeURIComponent(token)}`);
  await page.waitForFunction(() => window.consultCall !== undefined, null, { timeout: 10_000 });
  if (devices) await page.getByRole('button', { name: 'Turn on camera and microphone' }).click();
  return page;
}

/**
 * Polls `read` in the page (default: `window.consultCall.stats()`) until `predicate` holds
 * of its result; resolves with that result and the time it was seen. Throws with the last
 * value after `timeoutMs`.
 */
export async function waitFor(page, predicate, label, timeoutMs = 30_000, read = () => window.consultCall?.stats()) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await page.evaluate(read);
    if (last != null && predicate(last)) return { value: last, at: performance.now() };
    if (Date.now() > end) throw new Error(`${label}: not reached within ${timeoutMs} ms; last ${JSON.stringify(last)}`);
    await sleep(100);
  }
}

/** `waitFor` on `window.consultCall.state()`. */
export function waitForState(page, predicate, label, timeoutMs = 15_000) {
  return waitFor(page, predicate, label, timeoutMs, () => window.consultCall?.state());
}

// --- REST -----------------------------------------------------------------------------------------

/** A small JSON client of the REST API, with a bearer token if given. */
export function rest(base, token) {
  const call = async (method, p, body) => {
    const res = await fetch(base + p, {
      method,
      headers: {
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };
  return {
    get: (p) => call('GET', p),
    post: (p, body) => call('POST', p, body),
  };
}

// --- accessibility ------------------------------------------------------------------------

const AXE_SOURCE = path.join(REPO_ROOT, 'web-client', 'node_modules', 'axe-core', 'axe.min.js');
let axeSource = null;

/**
 * Puts axe-core into the page. Evaluated through the DevTools protocol rather than added
 * as a <script>: the pages' Content-Security-Policy (rightly) refuses inline scripts.
 */
export async function injectAxe(page) {
  if (await page.evaluate(() => typeof window.axe !== 'undefined')) return;
  axeSource ??= await readFile(AXE_SOURCE, 'utf8');
  await page.evaluate(axeSource);
}
