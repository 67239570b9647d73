// Issue 17 part 4: staff sign-in through the hospital's identity provider (OpenID
// Connect), in headless Chromium against a real provider started here
// (tests/oidc-provider.mjs, the `oidc-provider` package): "Sign in with …", the
// provider's own login and consent pages, back on the reception board with exactly the
// clinics the person's group maps to; then the person is taken out of that group at the
// provider and, at the page's next token refresh (staff tokens last a minute here, so
// the page refreshes every few seconds), the page loses access: back on sign-in, its
// websocket closed. A person in no mapped group is refused with a plain page. The
// refusals: a callback with another state, without or with a forged start cookie, and a
// replayed callback (the provider refuses the used code), a code issued to another
// application at the same provider; and the provider down at a
// refresh: the sign-in goes on within unreachable_grace_minutes, and ends with none.
//
// Run by scripts/browser-tests (inside a private network namespace), or directly:
//   cd web-client && node --test tests/oidc.test.mjs

import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { writeFile } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import * as h from './harness.mjs';
import * as s from './staff-helpers.mjs';

h.watchdog(150);

const SECRET = 'consult-test-client-secret-0123456789';

let browser;
before(async () => {
  browser = await h.launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** A free loopback port (consult's: the provider must know its redirect URI first). */
async function freePort() {
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

/** The provider, with `accounts`; resolves with {issuer, setAccount(id, account)}. */
async function startProvider(env, redirectUri, accounts) {
  const proc = env.spawn('oidc-provider', process.execPath, [
    path.join(h.REPO_ROOT, 'web-client', 'tests', 'oidc-provider.mjs'),
    JSON.stringify({ redirect_uri: redirectUri, client_secret: SECRET, accounts }),
  ], { keepStdin: true });
  const [, issuer] = await proc.waitForLine(/"issuer":"([^"]+)"/);
  const setAccount = async (id, account) => {
    const res = await fetch(`${issuer}/test/accounts/${id}`, { method: 'POST', body: JSON.stringify(account) });
    assert.equal(res.status, 204);
  };
  return { issuer, setAccount, proc };
}

/** consult with clinics derm, eye and ent, and sign-in through the provider. */
async function platform(env, { grace = 60 } = {}) {
  const port = await freePort();
  const origin = `http://127.0.0.1:${port}`;
  const provider = await startProvider(env, `${origin}/api/staff/oidc/callback`, {
    olivia: { name: 'Olivia Okafor', groups: ['derm-eye-reception', 'canteen'] },
    pat: { name: 'Pat Nobody', groups: ['canteen'] },
  });
  const dir = await env.tmpdir();
  const config = path.join(dir, 'consult.toml');
  await writeFile(config, [
    'staff_token_minutes = 1',
    'session_check_seconds = 1',
    '[oidc]',
    `issuer = "${provider.issuer}"`,
    'client_id = "consult"',
    `client_secret = "${SECRET}"`,
    'provider_name = "Test Hospital"',
    `unreachable_grace_minutes = ${grace}`,
    'scopes = ["profile", "groups", "offline_access"]',
    '[oidc.groups.derm-eye-reception]',
    'role = "reception"',
    'clinics = ["derm", "eye"]',
    '[oidc.groups.ent-clinicians]',
    'role = "clinician"',
    'clinics = ["ent"]',
    '',
  ].join('\n'));
  const store = { dataDir: dir };
  for (const [id, name] of [['derm', 'Dermatology'], ['eye', 'Eye clinic'], ['ent', 'Ear, nose and throat']]) {
    await h.consultCli(env, store, ['clinic', 'add', id, '--name', name, '--open-link']);
  }
  const server = await h.startConsult(env, {
    ...store,
    extraEnv: { CONSULT_CONFIG: config, CONSULT_LISTEN: `127.0.0.1:${port}` },
  });
  assert.equal(server.url, origin);
  return { url: origin, provider, store };
}

/** Signs in at the provider's own pages: login (any password), then consent. */
async function signInAtProvider(page, login) {
  await page.locator('input[name=login]').fill(login);
  await page.locator('input[name=password]').fill('any password will do');
  await page.getByRole('button', { name: 'Sign-in' }).click();
  await page.getByRole('button', { name: 'Continue' }).click();
}

test('OIDC: sign-in ends on the reception board with the mapped clinics; removed from the group, the page loses access at the next refresh', async () => {
  await s.withStaffEnv('oidc sign-in', async (env) => {
    const p = await platform(env);
    const page = await s.openPage(browser, env, p.url, 'olivia');
    await s.waitStaff(page, (x) => x.view === 'sign-in', 'sign-in form shown');
    const button = page.getByRole('link', { name: 'Sign in with Test Hospital' });
    await button.waitFor();
    await button.click();
    await page.waitForURL((u) => u.origin === p.provider.issuer);
    await signInAtProvider(page, 'olivia');

    // Back on the staff page, signed in: the token came in a cookie, not in the URL.
    await page.waitForURL(`${p.url}/staff`);
    await s.waitStaff(
      page,
      (x) => x.view === 'board' && x.socket === 'open' && x.role === 'reception' && x.clinics.length === 2,
      'reception board with the mapped clinics',
    );
    const st = await page.evaluate(s.staffState);
    assert.deepEqual(st.clinics.map((c) => c.id).sort(), ['derm', 'eye']);
    await page.getByRole('heading', { name: 'Dermatology' }).waitFor();
    await page.getByRole('heading', { name: 'Eye clinic' }).waitFor();
    assert.equal(await page.getByRole('heading', { name: 'Ear, nose and throat' }).count(), 0);
    assert.ok(!page.url().includes('token'), page.url());

    // The directory keeps her as the provider says, with no password: the admin list
    // shows her; and the audit log says she signed in through the provider.
    const audit = await h.consultCli(env, p.store, ['audit', '--limit', '20']);
    assert.match(audit, /sign_in.*via oidc/);

    // A refresh works while she is in the group (the page refreshes every ~2 s).
    const first = await page.evaluate(() => JSON.parse(sessionStorage.getItem('consult.staff')).token);
    await h.waitFor(page, (t) => t && t !== first, 'a refreshed token', 15_000, () =>
      JSON.parse(sessionStorage.getItem('consult.staff'))?.token);

    // Taken out of the group at the provider: at the next refresh the sign-in ends.
    const removedAt = Date.now();
    await p.provider.setAccount('olivia', { name: 'Olivia Okafor', groups: ['canteen'] });
    await s.waitStaff(page, (x) => x.view === 'sign-in' && x.socket === 'closed', 'back on sign-in, websocket closed', 20_000);
    const tookMs = Date.now() - removedAt;
    const note = await page.locator('#sign-in-note').textContent();
    assert.match(note, /signed out/i);
    console.log(`removed from the group: signed out ${tookMs} ms later`);
    const audit2 = await h.consultCli(env, p.store, ['audit', '--limit', '20']);
    assert.match(audit2, /sign_in_ended.*via oidc: no group maps to a role any more/);
  });
});

test('OIDC: someone whose groups map to nothing is refused with a plain page, and it is audited', async () => {
  await s.withStaffEnv('oidc refused', async (env) => {
    const p = await platform(env);
    const page = await s.openPage(browser, env, p.url, 'pat');
    const button = page.getByRole('link', { name: 'Sign in with Test Hospital' });
    await button.click();
    await page.waitForURL((u) => u.origin === p.provider.issuer);
    await signInAtProvider(page, 'pat');
    await page.getByRole('heading', { name: 'No access to this service' }).waitFor();
    assert.match(await page.locator('main').textContent(), /gives you no access here/);
    const audit = await h.consultCli(env, p.store, ['audit', '--limit', '20']);
    assert.match(audit, /sign_in_refused.*via oidc: user pat: no group maps to a role/);
    // Nobody is signed in, and no record was made for her.
    assert.doesNotMatch(audit, /"actor":"staff:pat"/);
  });
});

/** GET with a cookie, without following redirects. */
const get = (url, cookie) => fetch(url, { redirect: 'manual', headers: cookie ? { cookie } : {} });

test('OIDC refusals: a callback with a bad state or no start, a replayed callback', async () => {
  await s.withStaffEnv('oidc refusals', async (env) => {
    const p = await platform(env);
    // A start hands the browser a signed cookie and sends it to the provider with PKCE.
    const start = await get(`${p.url}/api/staff/oidc/start`);
    assert.equal(start.status, 303);
    const to = new URL(start.headers.get('location'));
    assert.equal(to.origin, p.provider.issuer);
    assert.equal(to.searchParams.get('code_challenge_method'), 'S256');
    assert.ok(to.searchParams.get('nonce'));
    const setCookie = start.headers.get('set-cookie');
    assert.match(setCookie, /HttpOnly/i);
    assert.match(setCookie, /SameSite=Lax/i);
    const cookie = setCookie.split(';')[0];
    const state = to.searchParams.get('state');
    // Another state than the one started: refused, nobody signed in.
    let r = await get(`${p.url}/api/staff/oidc/callback?code=abc&state=not-${state}`, cookie);
    assert.equal(r.status, 400);
    assert.match(await r.text(), /expired or was not started here/);
    // The right state without the browser's cookie: refused.
    r = await get(`${p.url}/api/staff/oidc/callback?code=abc&state=${state}`);
    assert.equal(r.status, 400);
    // A forged cookie: refused.
    r = await get(`${p.url}/api/staff/oidc/callback?code=abc&state=${state}`, 'consult_oidc=eyJhbGciOiJIUzI1NiJ9.e30.x');
    assert.equal(r.status, 400);

    // A real sign-in in Chromium; its callback is kept and replayed.
    const page = await s.openPage(browser, env, p.url, 'olivia');
    let callback = null;
    page.on('request', async (req) => {
      if (req.url().includes('/api/staff/oidc/callback')) callback = { url: req.url(), cookie: (await req.allHeaders()).cookie };
    });
    await page.getByRole('link', { name: 'Sign in with Test Hospital' }).click();
    await page.waitForURL((u) => u.origin === p.provider.issuer);
    await signInAtProvider(page, 'olivia');
    await s.waitStaff(page, (x) => x.view === 'board' && x.socket === 'open', 'signed in');
    assert.ok(callback?.cookie, 'the callback carried the pending cookie');
    // The same browser again: its pending cookie is gone.
    r = await get(callback.url);
    assert.equal(r.status, 400);
    // Code and cookie both replayed (someone who copied them): the provider refuses the
    // used code, so nobody is signed in.
    r = await get(callback.url, callback.cookie);
    assert.equal(r.status, 400);
    assert.match(await r.text(), /Sign-in did not work/);
    assert.equal(r.headers.get('location'), null);
    // Only the one sign-in happened.
    const audit = await h.consultCli(env, p.store, ['audit', '--limit', '50']);
    assert.equal((audit.match(/"action":"sign_in","detail":"[^"]*via oidc"/g) || []).length, 1, audit);
  });
});

test('OIDC: a code the provider issued to another application is refused', async () => {
  await s.withStaffEnv('oidc other client', async (env) => {
    const p = await platform(env);
    const page = await s.openPage(browser, env, p.url, 'olivia');
    // A sign-in started at consult (its pending cookie in the browser), but the request
    // that reaches the provider is for another application registered there (same
    // redirect address): the code that comes back to consult's callback was issued to it.
    const start = await get(`${p.url}/api/staff/oidc/start`);
    assert.equal(start.status, 303);
    const [pair] = start.headers.get('set-cookie').split(';');
    const eq = pair.indexOf('=');
    await page.context().addCookies([
      { name: pair.slice(0, eq), value: pair.slice(eq + 1), url: `${p.url}/api/staff/oidc/` },
    ]);
    const to = new URL(start.headers.get('location'));
    assert.equal(to.searchParams.get('client_id'), 'consult');
    to.searchParams.set('client_id', 'other-app');
    let callback = 0;
    page.on('response', (res) => {
      if (res.url().includes('/api/staff/oidc/callback')) callback = res.status();
    });
    await page.goto(to.href);
    await signInAtProvider(page, 'olivia');
    await page.getByText(/Sign-in did not work/).waitFor();
    assert.equal(callback, 400, 'the callback refuses it');
    // Nobody signed in, no record made.
    const audit = await h.consultCli(env, p.store, ['audit', '--limit', '50']);
    assert.doesNotMatch(audit, /"action":"sign_in","detail":"[^"]*via oidc"/, audit);
    assert.doesNotMatch(audit, /"actor":"staff:olivia"/, audit);
  });
});

test('OIDC: the provider down at a refresh keeps the sign-in within the grace period; with no grace it ends', async () => {
  for (const grace of [60, 0]) {
    await s.withStaffEnv(`oidc provider down, grace ${grace}`, async (env) => {
      const p = await platform(env, { grace });
      const page = await s.openPage(browser, env, p.url, 'olivia');
      await page.getByRole('link', { name: 'Sign in with Test Hospital' }).click();
      await page.waitForURL((u) => u.origin === p.provider.issuer);
      await signInAtProvider(page, 'olivia');
      await s.waitStaff(page, (x) => x.view === 'board' && x.socket === 'open', 'signed in');
      await p.provider.proc.stop();
      const first = await page.evaluate(() => JSON.parse(sessionStorage.getItem('consult.staff')).token);
      if (grace > 0) {
        // Several refreshes (every ~2 s) while the provider is away: still on the board.
        await h.waitFor(page, (t) => t && t !== first, 'a token refreshed without the provider', 15_000, () =>
          JSON.parse(sessionStorage.getItem('consult.staff'))?.token);
        await h.sleep(5000);
        const st = await page.evaluate(s.staffState);
        assert.equal(st.view, 'board');
        const audit = await h.consultCli(env, p.store, ['audit', '--limit', '50']);
        assert.doesNotMatch(audit, /sign_in_ended/);
      } else {
        await s.waitStaff(page, (x) => x.view === 'sign-in' && x.socket === 'closed', 'signed out', 20_000);
        const audit = await h.consultCli(env, p.store, ['audit', '--limit', '50']);
        assert.match(audit, /sign_in_ended.*has not confirmed it/);
      }
    });
  }
});
