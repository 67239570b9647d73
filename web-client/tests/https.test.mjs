// Issue 17: the platform over HTTPS, as a hospital runs it. A patient and a clinician in
// a call, in Chromium trusting only a test certificate: first with consult terminating
// TLS itself (tls_cert, tls_key), serving the pages built into its binary; then behind
// Debian's nginx running infra/nginx/consult.conf (TLS there, the websocket upgraded
// through it, consult on plain HTTP with an https public_url, so it sends HSTS).
//
// Run by scripts/browser-tests (inside a private network namespace, as root), or
//   scripts/browser-tests tests/https.test.mjs

import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { chromium } from 'playwright-core';
import * as h from './harness.mjs';
import * as p from './patient-helpers.mjs';
import * as s from './staff-helpers.mjs';
import { listening, testCertificate } from './coturn.mjs';

h.watchdog(150);

export const NGINX_SITE = path.join(h.REPO_ROOT, 'infra', 'nginx', 'consult.conf');
const SITE_NAME = 'consult.test';

/** Chromium trusting the certificate whose key hashes to `spki`, and no other. */
async function trustingBrowser(env, spki) {
  const browser = await chromium.launch({
    executablePath: h.CHROMIUM,
    headless: true,
    args: [...h.CHROMIUM_ARGS, `--ignore-certificate-errors-spki-list=${spki}`],
  });
  env.servers.push({ close: () => browser.close().catch(() => {}) });
  return browser;
}

/**
 * On `origin` (https): the clinician signs in, a patient checks, enters and is called in;
 * video and sound must flow both ways. Returns the page responses' headers.
 */
async function callOver(env, browser, origin, password) {
  const doc = await s.openPage(browser, env, origin, 'clinician');
  const staffPage = await doc.goto(`${origin}/staff`);
  assert.equal(staffPage.status(), 200);
  assert.ok(doc.url().startsWith('https://'), doc.url());
  await s.signIn(doc, 'dr.jones', password);
  await s.waitStaff(doc, (x) => x.socket === 'open' && x.clinics.length === 1, 'the clinician board over wss');

  const page = await p.openPatient(browser, env, origin, '/c/derm', 'patient');
  await p.startCheck(page);
  await p.waitPatient(page, p.checkPassed, 'the pre-call check passes over https', 30_000);
  await p.enterWaitingRoom(page, 'Pat Secure', 'patient', undefined, p.checkPassed);
  await s.waitStaff(doc, (x) => s.clinic(x, 'derm').waiting.some((v) => v.name === 'Pat Secure'), 'the clinician sees the patient');
  await doc.getByRole('button', { name: 'Call next patient in Dermatology', exact: true }).click();
  await h.waitFor(doc, h.receiving, 'the clinician receives the patient', 40_000, h.staffStats);
  await p.waitPatientStats(page, h.receiving, 'the patient receives the clinician', 40_000);
  return staffPage.headers();
}

test('consult serving HTTPS itself: a patient and a clinician in a call, over the built-in pages', async () => {
  await s.withCallEnv('https direct', async (env) => {
    const dir = await env.tmpdir();
    const { cert, key, spki } = await testCertificate(dir, '127.0.0.1', SITE_NAME);
    const pf = await s.platform(env, {
      clinics: [['derm', 'Dermatology']],
      staff: [['dr.jones', 'Dr Jones', 'clinician', ['derm']]],
      // The pages built into the binary, not web-client/public on disk.
      extraEnv: { CONSULT_TLS_CERT: cert, CONSULT_TLS_KEY: key, CONSULT_WEB_ROOT: '' },
    });
    assert.ok(pf.url.startsWith('https://127.0.0.1:'), pf.url);
    const browser = await trustingBrowser(env, spki);
    const headers = await callOver(env, browser, pf.url, pf.passwords['dr.jones']);
    assert.equal(headers['strict-transport-security'], 'max-age=31536000');
    assert.match(headers['content-security-policy'], /script-src 'self'/);
  });
});

/**
 * Debian's nginx running infra/nginx/consult.conf on 127.0.0.1:`port` with a test
 * certificate, proxying to consult at `upstream` (host:port). Resolves with { proc, spki }.
 */
async function startNginx(env, { port, upstream }) {
  const dir = await env.tmpdir();
  const { cert, key, spki } = await testCertificate(dir, '127.0.0.1', SITE_NAME);
  let site = await readFile(NGINX_SITE, 'utf8');
  for (const [from, to] of [
    ['server 127.0.0.1:8080;', `server ${upstream};`],
    ['    listen 80;\n', `    listen 127.0.0.1:${port + 1};\n`],
    ['    listen [::]:80;\n', ''],
    ['    listen 443 ssl http2;\n', `    listen 127.0.0.1:${port} ssl http2;\n`],
    ['    listen [::]:443 ssl http2;\n', ''],
    ['/etc/ssl/consult/fullchain.pem', cert],
    ['/etc/ssl/consult/privkey.pem', key],
  ]) {
    if (!site.includes(from)) throw new Error(`${NGINX_SITE} no longer has "${from.trim()}": update the test`);
    site = site.replaceAll(from, to);
  }
  site = site.replaceAll('video.example-hospital.org', SITE_NAME);
  await writeFile(path.join(dir, 'consult.conf'), site);
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `${t}_temp_path ${path.join(dir, t)};`).join('\n  ');
  await writeFile(
    path.join(dir, 'nginx.conf'),
    `daemon off;
worker_processes 1;
pid ${path.join(dir, 'nginx.pid')};
error_log stderr notice;
events { worker_connections 256; }
http {
  access_log off;
  ${temp}
  include ${path.join(dir, 'consult.conf')};
}
`,
  );
  const proc = env.spawn('nginx', 'nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-e', 'stderr']);
  await listening(proc, '127.0.0.1', port);
  return { proc, spki };
}

test('behind nginx (infra/nginx/consult.conf): a call over https, the websocket upgraded through the proxy, HSTS from an https public_url', async () => {
  await s.withCallEnv('https behind nginx', async (env) => {
    const port = 9443;
    const origin = `https://127.0.0.1:${port}`;
    const pf = await s.platform(env, {
      clinics: [['derm', 'Dermatology']],
      staff: [['dr.jones', 'Dr Jones', 'clinician', ['derm']]],
      extraEnv: { CONSULT_PUBLIC_URL: origin, CONSULT_TRUSTED_PROXIES: '["127.0.0.1/32"]' },
    });
    const nginx = await startNginx(env, { port, upstream: pf.url.replace('http://', '') });
    const browser = await trustingBrowser(env, nginx.spki);
    const headers = await callOver(env, browser, origin, pf.passwords['dr.jones']);
    assert.equal(headers['strict-transport-security'], 'max-age=31536000');
    // Plain HTTP to the proxy is sent to https.
    const redirect = await fetch(`http://127.0.0.1:${port + 1}/staff`, { redirect: 'manual' });
    assert.equal(redirect.status, 301);
    assert.equal(redirect.headers.get('location'), 'https://127.0.0.1/staff');
  });
});
