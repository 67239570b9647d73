// Issue 14, part 3: a call that survives its network. A patient and a clinician are in a
// call, each decoding the other; then the patient's media path is broken with nftables
// (this test runs inside its own network namespace, scripts/browser-tests):
//   - cut for 3 s and reopened: media resumes both ways, timed from the reopening;
//   - cut for good (the ports it used are blocked from then on, as when a phone's address
//     changes): the page restarts ICE on both its connections, which find a new path, and
//     media resumes both ways, timed from the cut;
//   - a new network for good, websocket included: the media ports blocked again, and the
//     patient's websocket reset: the page reconnects, takes its media session back
//     (`resume_media`) and restarts ICE; timed from the change.
// Neither page reloads or rejoins (no second join_media), and the patient's consultation is
// the same. Each is done 3 times (RUNS; 20 for the report, p50 / p95 in
// load-tests/REPORT.md):
//   RUNS=20 scripts/browser-tests tests/ice-restart.test.mjs

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, test } from 'node:test';
import * as h from './harness.mjs';
import * as s from './staff-helpers.mjs';

const RUNS = Number(process.env.RUNS || 3);
h.watchdog(120 + RUNS * 45);

const CLINIC = 'cardiology';
const CLINICIAN = 'dr.path';

let browser;
before(async () => {
  browser = await h.launchBrowser();
});
after(async () => {
  await browser?.close();
  nft('delete table inet icetest', { ignoreErrors: true });
});

function nft(script, { ignoreErrors = false } = {}) {
  try {
    execFileSync('nft', ['-f', '-'], { input: script, stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (e) {
    if (!ignoreErrors) throw new Error(`nft failed: ${e.stderr?.toString() || e.message}\n${script}`);
  }
}

/**
 * Drops every UDP and TCP packet to or from these local ports (on `lo`, both ways), and
 * resets the TCP connections whose local ports are `resetPorts` (a page's websocket).
 */
function block(ports, resetPorts = []) {
  const set = ports.join(', ');
  const resets = resetPorts.join(', ');
  const reset = resetPorts.length
    ? // (resets themselves pass, or each would be refused in turn)
      `\n    tcp sport { ${resets} } tcp flags & rst == 0 reject with tcp reset` +
      `\n    tcp dport { ${resets} } tcp flags & rst == 0 reject with tcp reset`
    : '';
  nft(`table inet icetest {
  chain input {
    type filter hook input priority 0; policy accept;
    udp sport { ${set} } drop
    udp dport { ${set} } drop
    tcp sport { ${set} } drop
    tcp dport { ${set} } drop${reset}
  }
}`);
}
const unblock = () => nft('delete table inet icetest');

/** The local ports of the established TCP connections to `serverPort` (the websockets). */
function wsPorts(serverPort) {
  const out = execFileSync('ss', ['-tnH', 'state', 'established', `( dport = :${serverPort} )`]).toString();
  return new Set(out.split('\n').filter(Boolean).map((l) => Number(l.trim().split(/\s+/)[2].split(':').pop())));
}

const stats = () => window.consultCall.stats();
const messages = () => window.consultCall.messages();

/** The local ports of a page's two connections' selected paths. */
async function mediaPorts(page) {
  const { value } = await h.waitFor(page, (x) => x.paths?.publisher && x.paths?.subscriber, 'both paths selected', 10_000, stats);
  return [...new Set([value.paths.publisher.port, value.paths.subscriber.port])];
}

/** Resolves with the time (performance.now() of this process) both pages decode new frames. */
async function bothResume(patient, clinician, label, timeoutMs) {
  const [a, b] = await Promise.all([patient.evaluate(stats), clinician.evaluate(stats)]);
  // (A page that joined again has a new connection, whose count starts from nothing.)
  const more = (base) => (x) => {
    const n = x.inboundVideo.framesDecoded;
    return n >= base + 5 || (n < base && n >= 5);
  };
  const [p, c] = await Promise.all([
    waitFast(patient, more(a.inboundVideo.framesDecoded), `${label}: the patient decodes the clinician again`, timeoutMs),
    waitFast(clinician, more(b.inboundVideo.framesDecoded), `${label}: the clinician decodes the patient again`, timeoutMs),
  ]);
  return { at: Math.max(p, c), patient: p, clinician: c };
}

/** Waits until neither page decodes a new frame for 500 ms (the cut has taken hold). */
async function stalled(patient, clinician, label) {
  const end = Date.now() + 5_000;
  let last = null;
  let since = Date.now();
  for (;;) {
    const now = await Promise.all([patient.evaluate(stats), clinician.evaluate(stats)]).then((x) => x.map((y) => y.inboundVideo.framesDecoded).join());
    if (now !== last) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since >= 500) {
      return;
    }
    if (Date.now() > end) throw new Error(`${label}: the pages still decode after the cut (${now})`);
    await h.sleep(50);
  }
}

/** Like h.waitFor on the stats, polled every 50 ms. */
async function waitFast(page, predicate, label, timeoutMs) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const x = await page.evaluate(stats);
    if (predicate(x)) return performance.now();
    if (Date.now() > end) throw new Error(`${label}: not within ${timeoutMs} ms; last ${JSON.stringify(x.inboundVideo)} ${JSON.stringify(x.connections ?? null)}`);
    await h.sleep(50);
  }
}

const percentile = (values, q) => {
  const v = [...values].sort((x, y) => x - y);
  return v[Math.min(v.length - 1, Math.round((q / 100) * (v.length - 1)))];
};

test('a cut path and a lost one: media resumes both ways, with no reload and no rejoin', async () => {
  await h.withEnv('ice restart', async (env) => {
    const server = await s.platform(env, {
      clinics: [[CLINIC, 'Cardiology']],
      staff: [[CLINICIAN, 'Dr Path', 'clinician', [CLINIC]]],
    });
    const { token } = await h.rest(server.url).post('/api/staff/sign-in', {
      username: CLINICIAN,
      password: server.passwords[CLINICIAN],
    });
    const staff = h.rest(server.url, token);
    const clinician = await h.openCall(browser, env, server.url, token, 'clinician');
    await h.waitForState(clinician, (x) => x.socket === 'open' && x.role === 'clinician', 'clinician page signed in');
    const entered = await s.enter(server.url, CLINIC, 'Pat Path');
    await staff.post('/api/commands', { type: 'admit_next', clinic: CLINIC });
    const serverPort = Number(new URL(server.url).port);
    const others = wsPorts(serverPort);
    const patient = await h.openCall(browser, env, server.url, entered.visit_token, 'patient');
    await h.waitForState(patient, (x) => x.socket === 'open', 'the patient page is connected');
    assert.ok([...wsPorts(serverPort)].some((p) => !others.has(p)), 'the patient page has its connections');
    const decoding = (x) => x.inboundVideo.framesDecoded > 0 && x.inboundAudio.packetsReceived > 0;
    await h.waitFor(patient, decoding, 'the patient decodes the clinician', 30_000, stats);
    await h.waitFor(clinician, decoding, 'the clinician decodes the patient', 30_000, stats);
    const consultation = (await patient.evaluate(() => window.consultCall.state())).consultation;
    assert.ok(consultation, 'the patient is in a consultation');

    // 1. Cut for 3 s, then reopened.
    const resumed = [];
    for (let i = 0; i < RUNS; i++) {
      const ports = await mediaPorts(patient);
      block(ports);
      await h.sleep(3_000);
      unblock();
      const reopened = performance.now();
      const r = await bothResume(patient, clinician, `cut ${i + 1}`, 10_000);
      resumed.push(r.at - reopened);
      const marks = (await patient.evaluate(stats)).marks;
      const restarts = (await patient.evaluate(messages)).filter((m) => m.dir === 'out' && m.type === 'restart_ice').length;
      console.log(
        `cut ${i + 1} (ports ${ports.join(', ')}): both decode again ${Math.round(r.at - reopened)} ms after the path ` +
          `reopened (the patient ${Math.round(r.patient - reopened)} ms, the clinician ${Math.round(r.clinician - reopened)} ms)` +
          `${marks.restarted ? `; ICE last restarted ${Math.round(marks.restarted - marks.joined)} ms after joining` : ''}` +
          `, ${restarts} restarts so far`,
      );
      await h.sleep(1_000);
    }

    // 2. The path lost for good: the ports it used stay blocked (RUNS times, each time
    //    the ports of the path found the time before).
    const lost = [];
    for (let i = 0; i < RUNS; i++) {
      const oldPorts = await mediaPorts(patient);
      block(oldPorts);
      const cut = performance.now();
      const cutInPage = await patient.evaluate(() => performance.now());
      await stalled(patient, clinician, 'path lost');
      const r = await bothResume(patient, clinician, 'path lost', 20_000);
      const after = await patient.evaluate(stats);
      const newPorts = [after.paths.publisher?.port, after.paths.subscriber?.port];
      lost.push(r.at - cut);
      console.log(
        `path lost ${i + 1} (ports ${oldPorts.join(', ')} blocked): both decode again ${Math.round(r.at - cut)} ms after the cut, ` +
          `over ports ${newPorts.join(', ')}; from the cut: ICE restarted at ${Math.round(after.marks.restarted - cutInPage)} ms, ` +
          `both connections back at ${Math.round(after.marks.recovered - cutInPage)} ms, the patient decodes at ` +
          `${Math.round(r.patient - cut)} ms, the clinician at ${Math.round(r.clinician - cut)} ms`,
      );
      assert.ok(after.marks.restarted > cutInPage, 'the page restarted ICE');
      assert.ok(newPorts.every((p) => p && !oldPorts.includes(p)), `a new path: ${newPorts} (was ${oldPorts})`);
      unblock();
      await h.sleep(1_000);
    }

    // 3. A new network, websocket included: the old media path and the patient's websocket
    //    are gone (the page notices the silence; its restart_ice meets a reset), RUNS times.
    const moved = [];
    for (let i = 0; i < RUNS; i++) {
      const lastPorts = await mediaPorts(patient);
      // The patient's websocket now (a new one after each round), and whatever else the
      // page has open to the server (reset with it: harmless).
      const patientTcp = [...wsPorts(serverPort)].filter((p) => !others.has(p));
      block(lastPorts, patientTcp);
      const back = performance.now();
      const changedAt = Date.now();
      await stalled(patient, clinician, 'new network');
      const r = await bothResume(patient, clinician, 'new network', 20_000);
      moved.push(r.at - back);
      const log = await patient.evaluate(messages);
      // (The page keeps its last 2,000 messages: look at those since the change.)
      const resumedSession = log.some((m) => m.at >= changedAt && m.dir === 'in' && m.type === 'media_resumed');
      console.log(
        `new network ${i + 1} (the patient's websocket reset, ports ${lastPorts.join(', ')} blocked): both decode again ` +
          `${Math.round(r.at - back)} ms after the change (the patient at ${Math.round(r.patient - back)} ms, the clinician ` +
          `at ${Math.round(r.clinician - back)} ms); the patient's session ${resumedSession ? 'was resumed' : 'was NOT resumed'}; ` +
          'its messages since the change: ' +
          log
            .filter((m) => m.at >= changedAt)
            .map((m) => `${m.dir === 'out' ? '>' : '<'}${m.type}${m.code ? `(${m.code})` : ''}@${m.at - changedAt}`)
            .join(' '),
      );
      assert.ok(resumedSession, 'the patient page took its media session back (media_resumed)');
      unblock();
      await h.sleep(1_000);
    }

    // The same session all along: one join_media each, the same consultation.
    for (const [label, page] of [['patient', patient], ['clinician', clinician]]) {
      const sent = (await page.evaluate(messages)).filter((m) => m.dir === 'out');
      assert.equal(sent.filter((m) => m.type === 'join_media').length, 1, `${label}: joined the media once`);
    }
    assert.equal((await patient.evaluate(() => window.consultCall.state())).consultation, consultation);
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');

    const p = (values, q) => Math.round(percentile(values, q));
    const summary =
      `ice-restart runs=${RUNS} cut_resume_p50_ms=${p(resumed, 50)} cut_resume_p95_ms=${p(resumed, 95)} ` +
      `lost_resume_p50_ms=${p(lost, 50)} lost_resume_p95_ms=${p(lost, 95)} ` +
      `new_network_resume_p50_ms=${p(moved, 50)} new_network_resume_p95_ms=${p(moved, 95)}`;
    console.log(summary);
    // The issue's target is 3 s: met at p95 with release builds (20 runs each,
    // load-tests/REPORT.md). This short tier runs debug builds on a 2-core CI machine,
    // whose medians of 3 were 2.1-3.1 s over the last seven runs: each median is held
    // under 3.5 s, and each run under 8 s.
    for (const [what, values] of [
      ['the path reopening', resumed],
      ['losing its path', lost],
      ['the new network', moved],
    ]) {
      assert.ok(percentile(values, 50) < 3_500, `media resumed within 3.5 s of ${what}: ${values.map(Math.round)}`);
      for (const r of values) assert.ok(r < 8_000, `media resumed within 8 s of ${what} (${Math.round(r)} ms)`);
    }
  });
});
