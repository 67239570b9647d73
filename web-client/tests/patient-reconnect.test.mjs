// Issue 4, the patient's side: a dropped connection returns the patient to the same place
// with no click. The signalling server (Redis mode, a separate `sfu` process) is
// restarted on the same port while the patient waits, and again while they are in a
// call: the page reconnects by itself, keeps its visit and place, and the call comes back.
//
//   cd web-client && node --test tests/patient-reconnect.test.mjs

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import * as h from './harness.mjs';
import * as p from './patient-helpers.mjs';

h.watchdog(90);

const CLINIC = 'dermatology';

let browser;
before(async () => {
  browser = await h.launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** A TCP port free on loopback now. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

test('a dropped connection (the server restarts) returns the patient to the same place', async () => {
  await p.withPatientEnv('patient reconnect', async (env) => {
    const dir = await env.tmpdir();
    const redis = await h.startRedis(env, dir);
    await h.startSfu(env, { redisUrl: redis.url, nodeId: 'sfu-1' });
    const store = { dataDir: dir, redisUrl: redis.url };
    await h.consultCli(env, store, ['clinic', 'add', CLINIC, '--name', 'Dermatology', '--open-link']);
    const password = 'correct horse battery staple';
    await h.consultCli(env, store, ['staff', 'add', 'dr.jones', '--name', 'Dr Jones', '--role', 'clinician', '--clinic', CLINIC, '--password-stdin'], `${password}\n`);
    const port = await freePort();
    const serve = () => h.startConsult(env, { ...store, extraEnv: { CONSULT_LISTEN: `127.0.0.1:${port}` } });
    let server = await serve();
    const origin = server.url;
    const restart = async () => {
      await server.proc.stop();
      server = await serve();
    };

    const { token } = await h.rest(origin).post('/api/staff/sign-in', { username: 'dr.jones', password });
    const staff = h.rest(origin, token);
    const page = await p.openPatient(browser, env, origin, `/c/${CLINIC}`, 'patient');
    const { waiting } = await p.enterWaitingRoom(page, 'Dee Dropped', 'patient');

    // Waiting: the server goes away and comes back; the page says so, then carries on.
    await restart();
    const again = await p.waitPatient(page, (s) => s.socket === 'open' && s.patient === 'waiting' && s.announced.includes('Reconnected.'), 'waiting again after the restart', 20_000);
    assert.equal(again.screen, 'waiting');
    assert.equal(again.visit, waiting.visit);
    assert.equal(again.waitingSince, waiting.waitingSince);
    assert.ok(
      again.announced.some((a) => /interrupted/.test(a)) || (await page.evaluate(() => window.consultPatient.messages().filter((m) => m.type === 'welcome').length)) >= 2,
      'the page reconnected',
    );

    // In a call: the restart drops the media too; the call comes back with no click.
    const clinician = await h.openCall(browser, env, origin, token, 'clinician');
    await h.waitForState(clinician, (s) => s.socket === 'open' && s.role === 'clinician', 'clinician page signed in');
    await staff.post('/api/commands', { type: 'admit_next', clinic: CLINIC });
    await p.waitPatientStats(page, h.receiving, 'the patient receives the clinician');
    const before = await page.evaluate(() => window.consultPatient.messages().filter((m) => m.type === 'media_joined').length);
    await restart();
    const t0 = performance.now();
    await p.waitPatient(page, (s) => s.socket === 'open' && s.screen === 'call', 'in the call again after the restart', 20_000);
    await h.waitFor(
      page,
      (s) => s.state === 'connected' && h.receiving(s),
      'the patient receives the clinician again',
      30_000,
      () => window.consultPatient.stats(),
    );
    const after = await page.evaluate(() => window.consultPatient.messages().filter((m) => m.type === 'media_joined').length);
    assert.ok(after > before, 'the media session was joined again');
    console.log(`restart in a call -> decoding again after ${Math.round(performance.now() - t0)} ms`);
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors in the pages');
  });
});
