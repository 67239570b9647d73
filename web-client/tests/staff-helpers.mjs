// Helpers for the staff pages' browser tests (staff.test.mjs), on top of harness.mjs:
// a platform with clinics and staff, staff pages in their own browser contexts, sign-in
// through the form, waiting on `window.consultStaff` / `window.consultAdmin`, axe-core
// checks and screenshots.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import * as h from './harness.mjs';
import { withPatientEnv } from './patient-helpers.mjs';

export const SCREENSHOTS = path.join(h.REPO_ROOT, 'docs', 'screenshots');
/** Screenshots are written only when asked (`UPDATE_SCREENSHOTS=1`), so a test run leaves
 * the tree as it was; the width checks run always. */
const WRITE_SHOTS = !!process.env.UPDATE_SCREENSHOTS;
export const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa'];
export const DESKTOP = { width: 1280, height: 800 };
export const MOBILE = { width: 375, height: 800 };

export const password = () => randomBytes(9).toString('hex'); // 18 characters

/**
 * A `consult serve` with the given clinics ([id, name]) and staff ([username, name, role,
 * [clinics]]), made with the command line. Resolves with {url, store, passwords}.
 */
export async function platform(env, { clinics = [], staff = [], extraEnv = {}, redisUrl }) {
  const store = { dataDir: await env.tmpdir(), ...(redisUrl ? { redisUrl } : {}) };
  for (const [id, name, open = true] of clinics) {
    await h.consultCli(env, store, ['clinic', 'add', id, '--name', name, ...(open ? ['--open-link'] : [])]);
  }
  const passwords = {};
  for (const [username, name, role, inClinics] of staff) {
    passwords[username] = password();
    await h.consultCli(
      env,
      store,
      ['staff', 'add', username, '--name', name, '--role', role, ...inClinics.flatMap((c) => ['--clinic', c]), '--password-stdin'],
      `${passwords[username]}\n`,
    );
  }
  const server = await h.startConsult(env, { ...store, extraEnv });
  return { url: server.url, proc: server.proc, store, passwords };
}

/** A patient enters `clinic` by its open link (REST); resolves with {visit, visit_token}. */
export function enter(origin, clinic, name) {
  return h.rest(origin).post('/api/visits', { entry: { kind: 'open_link', clinic }, name });
}

/** A staff page (or any page) in a new browser context, its console in the env's log. */
export async function openPage(browser, env, origin, label, where = '/staff') {
  const context = await browser.newContext({ viewport: DESKTOP });
  env.contexts.push(context);
  const page = await context.newPage();
  env.staffPages ??= new Map();
  env.staffPages.set(label, page);
  page.on('console', (m) => env.log.push(`[${label}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => {
    env.pageErrors.push(`[${label}] ${e.message}`);
    env.log.push(`[${label}] PAGE ERROR: ${e.stack || e.message}`);
  });
  await page.goto(origin + where);
  return page;
}

export const staffState = () => window.consultStaff?.state();
export const adminState = () => window.consultAdmin?.state();

/** Waits until `predicate(window.consultStaff.state())` holds. */
export function waitStaff(page, predicate, label, timeoutMs = 15_000) {
  return h.waitFor(page, predicate, label, timeoutMs, staffState);
}

export function waitAdmin(page, predicate, label, timeoutMs = 15_000) {
  return h.waitFor(page, predicate, label, timeoutMs, adminState);
}

/** Signs in through the page's form. */
export async function signIn(page, username, pass) {
  const form = page.locator('#sign-in-form');
  await form.getByLabel('User name').fill(username);
  await form.getByLabel('Password', { exact: true }).fill(pass);
  await form.getByRole('button', { name: 'Sign in' }).click();
}

/** The named clinic's part of a staff state. */
export const clinic = (s, id) => s.clinics.find((c) => c.id === id);

/** Runs axe-core on the page as it is now; fails with the violations, if any. */
export async function axe(page, label) {
  await h.injectAxe(page);
  const violations = await page.evaluate(
    (tags) =>
      window.axe
        .run(document, { runOnly: { type: 'tag', values: tags }, resultTypes: ['violations'] })
        .then((r) => r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => `${n.target.join(' ')}: ${n.failureSummary}`) }))),
    AXE_TAGS,
  );
  assert.deepEqual(violations, [], `axe: WCAG violations in "${label}":\n${JSON.stringify(violations, null, 2)}`);
  axeChecked.push(label);
}
export const axeChecked = [];

/** Screenshots at desktop and 375 px wide: docs/screenshots/<name>-desktop.png / -mobile.png. */
export async function shoot(page, name) {
  await mkdir(SCREENSHOTS, { recursive: true });
  const saved = page.viewportSize();
  // A modal dialog covers the viewport only: photograph what the person sees then.
  const fullPage = !(await page.evaluate(() => !!document.querySelector('dialog[open]')));
  if (WRITE_SHOTS) await page.screenshot({ path: path.join(SCREENSHOTS, `${name}-desktop.png`), fullPage });
  await page.setViewportSize({ width: 320, height: 800 });
  const narrow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(narrow <= 0, `${name}: the page is ${narrow} px wider than a 320 px screen`);
  await page.setViewportSize(MOBILE);
  // The page must not scroll sideways at 375 px (WCAG 1.4.10 reflow).
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `${name}: the page is ${overflow} px wider than a 375 px screen`);
  if (WRITE_SHOTS) await page.screenshot({ path: path.join(SCREENSHOTS, `${name}-mobile.png`), fullPage });
  await page.setViewportSize(saved || DESKTOP);
  shots.push(name);
}
export const shots = [];

/** axe and screenshots of one state. */
export async function check(page, name) {
  await axe(page, name);
  await shoot(page, name);
}

/** Runs `fn(env)` in a harness environment; on failure also prints the staff pages' state. */
export function withStaffEnv(name, fn) {
  return h.withEnv(name, (env) => reportingStaff(env, fn));
}

/** The same in a patient test's environment (`withPatientEnv`): a call's two sides. */
export function withCallEnv(name, fn) {
  return withPatientEnv(name, (env) => reportingStaff(env, fn));
}

async function reportingStaff(env, fn) {
  try {
    return await fn(env);
  } catch (e) {
    await reportStaff(env);
    throw e;
  }
}

/** Prints the state and websocket messages of the staff pages opened in `env`. */
export async function reportStaff(env) {
  for (const [label, page] of env.staffPages ?? []) {
    try {
      const seen = await Promise.race([
        page.evaluate(() => ({
          staff: window.consultStaff?.state(),
          admin: window.consultAdmin?.state(),
          messages: window.consultStaff?.messages(),
        })),
        new Promise((_, reject) => setTimeout(() => reject(new Error('timed out')), 3000)),
      ]);
      console.error(`--- staff page ${label}: ${JSON.stringify(seen, null, 1)}`);
    } catch (err) {
      console.error(`--- staff page ${label}: cannot read its state: ${err.message}`);
    }
  }
}
