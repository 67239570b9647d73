// Helpers for the patient page's browser tests (patient*.test.mjs), on top of harness.mjs:
// a platform with clinics and staff, patient pages with their websocket traffic recorded,
// polling of `window.consultPatient`, axe-core and screenshots at two widths.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { gzipSync } from 'node:zlib';
import path from 'node:path';
import { chromium } from 'playwright-core';
import * as h from './harness.mjs';

export const SCREENSHOTS = path.join(h.REPO_ROOT, 'docs', 'screenshots');
/** Screenshots are written only when asked (`UPDATE_SCREENSHOTS=1`), so a test run leaves
 * the tree as it was. */
const WRITE_SHOTS = !!process.env.UPDATE_SCREENSHOTS;
export const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa'];
export const DESKTOP = { width: 1280, height: 800 };
export const MOBILE = { width: 375, height: 812 };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A running platform: `consult serve` (SQLite, in-process SFU) with the given clinics and
 * staff, created with the command line. `staff` maps a username to {role, clinics}; each
 * gets a random password and is signed in: `tokens[username]`, `api[username]` (REST).
 */
export async function platform(env, { clinics, staff }) {
  const dataDir = await env.tmpdir();
  const store = { dataDir };
  for (const c of clinics) {
    await h.consultCli(env, store, ['clinic', 'add', c.id, '--name', c.name, ...(c.open === false ? [] : ['--open-link'])]);
  }
  const passwords = {};
  for (const [username, s] of Object.entries(staff)) {
    passwords[username] = randomBytes(12).toString('hex');
    await h.consultCli(
      env,
      store,
      ['staff', 'add', username, '--name', s.name ?? username, '--role', s.role, ...s.clinics.flatMap((c) => ['--clinic', c]), '--password-stdin'],
      `${passwords[username]}\n`,
    );
  }
  const server = await h.startConsult(env, store);
  const anon = h.rest(server.url);
  const tokens = {};
  const api = {};
  for (const username of Object.keys(staff)) {
    const { token } = await anon.post('/api/staff/sign-in', { username, password: passwords[username] });
    tokens[username] = token;
    api[username] = h.rest(server.url, token);
  }
  return { origin: server.url, server, store, anon, tokens, api };
}

/** The pages opened by openPatient, per environment, for diagnostics on failure. */
const patientPages = new Map(); // env -> Map(label -> page)

/**
 * A patient's page on `url` (a path such as /c/derm) in `context` (a new context, i.e. a
 * new person, if none is given). Records console lines, page errors and every websocket
 * frame the page receives (`page.wsFrames`, raw text) and every response body it gets
 * from /api (`page.apiBodies`).
 */
export async function openPatient(browser, env, origin, url, label, { context, contextOptions } = {}) {
  if (!context) {
    context = await browser.newContext(contextOptions);
    env.contexts.push(context);
  }
  const page = await context.newPage();
  await page.setViewportSize(DESKTOP);
  watchPage(env, page, label);
  await page.goto(origin + url);
  await page.waitForFunction(() => window.consultPatient !== undefined, null, { timeout: 10_000 });
  return page;
}

/** Records what a page logs and receives (console, errors, websocket frames, API bodies). */
export function watchPage(env, page, label) {
  if (!patientPages.has(env)) patientPages.set(env, new Map());
  patientPages.get(env).set(label, page);
  page.wsFrames = [];
  page.apiBodies = [];
  page.on('console', (m) => env.log.push(`[${label}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => {
    env.pageErrors.push(`[${label}] ${e.message}`);
    env.log.push(`[${label}] PAGE ERROR: ${e.stack || e.message}`);
  });
  page.assets = []; // [{url, type, body}] of every file the page downloads (not the API)
  if (h.engineOf(page) !== 'chromium') {
    // Not reported by puppeteer over BiDi: null, so that a test that reads them fails.
    page.wsFrames = page.apiBodies = page.assets = null;
    return;
  }
  page.on('websocket', (ws) => {
    ws.on('framereceived', (f) => page.wsFrames.push(typeof f.payload === 'string' ? f.payload : f.payload.toString()));
  });
  page.on('response', async (res) => {
    const url = res.url();
    if (url.startsWith('data:')) return;
    try {
      if (url.includes('/api/')) page.apiBodies.push(await res.text());
      else page.assets.push({ url, type: res.request().resourceType(), status: res.status(), body: await res.body() });
    } catch {
      // a body no longer available (page navigated)
    }
  });
}

/** Runs `fn(env)` like harness.withEnv, printing the patient pages' state on failure. */
export async function withPatientEnv(name, fn) {
  return h.withEnv(name, async (env) => {
    try {
      return await fn(env);
    } catch (e) {
      await reportPatients(env);
      throw e;
    } finally {
      patientPages.delete(env);
    }
  });
}

async function reportPatients(env) {
  for (const [label, page] of patientPages.get(env) ?? []) {
    try {
      const seen = await Promise.race([
        page.evaluate(async () => ({
          state: window.consultPatient?.state(),
          stats: await window.consultPatient?.stats(),
          messages: window.consultPatient?.messages(),
        })),
        sleep(3000).then(() => {
          throw new Error('timed out');
        }),
      ]);
      console.error(`--- patient page ${label}: state ${JSON.stringify(seen.state)}`);
      console.error(`--- patient page ${label}: stats ${JSON.stringify(seen.stats)}`);
      console.error(`--- patient page ${label}: websocket ${JSON.stringify((seen.messages || []).map((m) => `${m.dir}:${m.type}${m.state ? `:${m.state}` : ''}${m.reason ? `:${m.reason}` : ''}`))}`);
    } catch (e) {
      console.error(`--- patient page ${label}: cannot read its state: ${e.message}`);
    }
  }
}

/** Polls `window.consultPatient.state()` until `predicate` holds; returns that state. */
export async function waitPatient(page, predicate, label, timeoutMs = 15_000) {
  const { value } = await h.waitFor(page, predicate, label, timeoutMs, () => window.consultPatient?.state());
  return value;
}

/** Polls `window.consultPatient.stats()` until `predicate` holds; returns the stats. */
export async function waitPatientStats(page, predicate, label, timeoutMs = 30_000) {
  const { value } = await h.waitFor(page, predicate, label, timeoutMs, () => window.consultPatient?.stats());
  return value;
}

/**
 * Presses "Turn on camera and microphone" on the check screen: the page asks for them
 * only after a press (never on load).
 */
export async function startCheck(page) {
  await waitPatient(page, (s) => s.screen === 'check', 'the check screen');
  await page.getByRole('button', { name: 'Turn on camera and microphone' }).click();
}

/** The check has finished with media able to flow. */
export const checkPassed = (s) => s.screen === 'check' && s.check.network === 'ok' && s.check.camera === 'ok' && s.check.microphone === 'ok';

/**
 * Passes the check (`ready`: by default, everything works) and enters the waiting room
 * with `name`; resolves with the states at the check and in the waiting room.
 */
export async function enterWaitingRoom(page, name, label, details, ready = checkPassed) {
  if ((await page.evaluate(() => window.consultPatient.state().local)) === null) await startCheck(page);
  const checked = await waitPatient(page, ready, `${label}: the check passes`, 20_000);
  await page.getByRole('button', { name: 'Continue' }).click();
  await waitPatient(page, (s) => s.screen === 'details', `${label}: the name form`);
  await page.getByLabel('Your full name', { exact: true }).fill(name);
  if (details) await page.getByLabel(/Anything the clinic should know/).fill(details);
  await page.getByRole('button', { name: 'Join the waiting room' }).click();
  await waitPatient(
    page,
    (s) => s.screen === 'waiting' && s.socket === 'open' && s.patient === 'waiting' && s.visit,
    `${label}: in the waiting room`,
  );
  // The server's own word on the visit (its waiting_since), not the page's first guess.
  await h.waitFor(page, (m) => m.some((x) => x.dir === 'in' && x.type === 'patient_status'), `${label}: the server's status`, 10_000, () => window.consultPatient.messages());
  const waiting = await page.evaluate(() => window.consultPatient.state());
  return { checked, waiting };
}

// --- axe and screenshots -------------------------------------------------------------------------------

/** Every axe-core result so far: [{state, violations}] (printed by the tests). */
export const axeResults = [];

/**
 * Runs axe-core on the page with the WCAG 2.0/2.1/2.2 A and AA rules; fails with the
 * violations, listed with their nodes.
 */
export async function axeCheck(page, state) {
  await h.injectAxe(page);
  const result = await page.evaluate(
    (tags) => window.axe.run(document, { runOnly: { type: 'tag', values: tags }, resultTypes: ['violations'] }),
    AXE_TAGS,
  );
  const violations = result.violations.map((v) => ({
    id: v.id,
    impact: v.impact,
    help: v.help,
    nodes: v.nodes.map((n) => `${n.target.join(' ')}: ${n.failureSummary}`),
  }));
  axeResults.push({ state, violations: violations.length, passes: result.passes?.length ?? null });
  assert.deepEqual(violations, [], `axe-core violations on the patient page (${state})`);
}

/**
 * Screenshots of the page as it is at desktop (1280x800) and phone (375 px) widths, to
 * docs/screenshots/patient-<state>-<desktop|mobile>.png; the page ends at desktop size.
 */
export async function screenshots(page, state) {
  if (!WRITE_SHOTS) return [];
  await mkdir(SCREENSHOTS, { recursive: true });
  const files = [];
  for (const [kind, size] of [['desktop', DESKTOP], ['mobile', MOBILE]]) {
    await page.setViewportSize(size);
    await sleep(150); // layout and a fresh video frame
    const file = path.join(SCREENSHOTS, `patient-${state}-${kind}.png`);
    await page.screenshot({ path: file, fullPage: kind === 'mobile', animations: 'disabled', caret: 'hide' });
    files.push(path.basename(file));
  }
  await page.setViewportSize(DESKTOP);
  return files;
}

/** axe-core, no sideways scrolling at 320 px, and both screenshots for one state of the page. */
export async function record(page, state) {
  await axeCheck(page, state);
  assert.equal(await overflowAt320(page), 0, `the page (${state}) scrolls sideways at 320 px`);
  return screenshots(page, state);
}

/** The horizontal overflow of the page at 320 px (WCAG 1.4.10: no scrolling sideways). */
export async function overflowAt320(page) {
  await page.setViewportSize({ width: 320, height: 640 });
  await sleep(100);
  const over = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  await page.setViewportSize(DESKTOP);
  return over;
}

/** Chromium without the flag that accepts camera and microphone prompts by itself. */
export async function launchPromptingBrowser() {
  return chromium.launch({
    executablePath: h.CHROMIUM,
    headless: true,
    args: h.CHROMIUM_ARGS.filter((a) => a !== '--use-fake-ui-for-media-stream'),
  });
}

/**
 * What a page downloaded (not counting the API): per kind (document, script, stylesheet,
 * other), the files, their bytes as served and gzipped (level 9, as a compressing proxy
 * or server would send them).
 */
export function downloaded(page) {
  const out = {};
  for (const a of page.assets) {
    const kind = ['document', 'script', 'stylesheet'].includes(a.type) ? a.type : 'other';
    out[kind] ??= { files: [], bytes: 0, gzip: 0 };
    out[kind].files.push(new URL(a.url).pathname);
    out[kind].bytes += a.body.length;
    out[kind].gzip += gzipSync(a.body, { level: 9 }).length;
  }
  return out;
}
