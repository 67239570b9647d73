// Issue 5, scenario 4: join time in a real browser. A patient's visit is admitted to a
// clinician whose call page is open; the patient then opens their link, and we time from
// that moment (the page's navigation start) to the first decoded frame of the clinician's
// video, split into phases on the patient's receiving (subscriber) connection:
//   signalling  the page loads, signs in over the websocket, joins the consultation's
//               media, and answers the SFU's offer carrying the clinician's tracks
//   ICE+DTLS    that answer sent -> the receiving connection is connected
//   first frame connected -> the first video frame decoded (getStats polled every 5 ms)
// The patient's browser is Chromium, or Firefox with PATIENT_BROWSER=firefox (the
// clinician's is Chromium either way). By default 3 joins (the smoke run in scripts/test);
// JOINS=30 for the report:
//   CONSULT_BIN=target/release/consult JOINS=30 scripts/browser-tests tests/join-time.test.mjs
//   CONSULT_BIN=target/release/consult JOINS=30 PATIENT_BROWSER=firefox \
//     scripts/browser-tests tests/join-time.test.mjs
// JT_DEBUG=1 also prints each join's marks and the patient page's messages, each with its
// time since navigation start.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import * as h from './harness.mjs';
import * as s from './staff-helpers.mjs';

const JOINS = Number(process.env.JOINS || 3);
const PATIENT_BROWSER = process.env.PATIENT_BROWSER || 'chromium';
h.watchdog(90 + JOINS * 10);

const CLINIC = 'cardiology';
const CLINICIAN = 'dr.time';

let browser; // the clinician's
let patientBrowser;
before(async () => {
  browser = await h.launchBrowser();
  patientBrowser = PATIENT_BROWSER === 'chromium' ? browser : await h.launchBrowser(PATIENT_BROWSER);
  console.log(`patient's browser: ${patientBrowser.version()}`);
});
after(async () => {
  if (patientBrowser !== browser) await patientBrowser?.close();
  await browser?.close();
});

const percentile = (values, p) => {
  const v = [...values].sort((a, b) => a - b);
  return v[Math.min(v.length - 1, Math.round((p / 100) * (v.length - 1)))];
};

/** Opens the admitted patient's link and times the phases to the first decoded frame. */
async function timeOneJoin(env, origin, visitToken, label) {
  const page = await h.openCall(patientBrowser, env, origin, visitToken, label);
  // In the page: poll until a video frame is decoded; then read its marks and messages.
  const seen = await page.evaluate(async () => {
    const end = performance.now() + 15_000;
    for (;;) {
      const s = await window.consultCall.stats();
      if (s.inboundVideo.framesDecoded > 0) {
        const frame = performance.now();
        // The 'connectionstatechange' event can come a moment after the first frame
        // (the stats are read on another thread): waited for, up to a second.
        let marks = s.marks;
        while (!marks.subscriberConnected && performance.now() < frame + 1000) {
          await new Promise((r) => setTimeout(r, 5));
          marks = (await window.consultCall.stats()).marks;
        }
        return { frame, marks, origin: performance.timeOrigin, messages: window.consultCall.messages() };
      }
      if (performance.now() > end) return { frame: null, stats: s };
      await new Promise((r) => setTimeout(r, 5));
    }
  });
  assert.ok(seen.frame, `${label}: no frame decoded within 15 s: ${JSON.stringify(seen.stats)}`);
  // Connected at the latest when its first frame was decoded.
  const connected = seen.marks.subscriberConnected && Math.min(seen.marks.subscriberConnected, seen.frame);
  assert.ok(connected > 0, `${label}: the receiving connection never said connected`);
  // The last answer to the SFU's offers sent before the receiving connection connected.
  const answers = seen.messages
    .filter((m) => m.dir === 'out' && m.type === 'subscriber_answer')
    .map((m) => m.at - seen.origin)
    .filter((t) => t <= connected);
  assert.ok(answers.length > 0, `${label}: no subscriber answer before the connection`);
  const answered = answers[answers.length - 1];
  if (process.env.JT_DEBUG) {
    console.log(label, JSON.stringify(seen.marks), seen.messages.map((m) => `${m.dir}:${m.type}@${Math.round(m.at - seen.origin)}`).join(' '));
  }
  return {
    signalling: answered,
    iceDtls: connected - answered,
    firstFrame: seen.frame - connected,
    total: seen.frame,
    page,
  };
}

test(`join time: ${JOINS} ${PATIENT_BROWSER} patients, link opened to first decoded frame`, async () => {
  await h.withEnv('join time', async (env) => {
    const server = await s.platform(env, {
      clinics: [[CLINIC, 'Cardiology']],
      staff: [[CLINICIAN, 'Dr Time', 'clinician', [CLINIC]]],
    });
    const { token } = await h.rest(server.url).post('/api/staff/sign-in', {
      username: CLINICIAN,
      password: server.passwords[CLINICIAN],
    });
    const staff = h.rest(server.url, token);

    const rows = [];
    for (let i = 0; i < JOINS; i++) {
      const clinician = await h.openCall(browser, env, server.url, token, `clinician-${i}`);
      await h.waitForState(clinician, (x) => x.socket === 'open' && x.role === 'clinician', 'clinician page signed in');
      const entered = await s.enter(server.url, CLINIC, `Patient ${i}`);
      await staff.post('/api/commands', { type: 'admit_next', clinic: CLINIC });
      const row = await timeOneJoin(env, server.url, entered.visit_token, `patient-${i}`);
      const ms = (x) => Math.round(x);
      console.log(
        `join ${i + 1}: total ${ms(row.total)} ms = signalling ${ms(row.signalling)} + ICE+DTLS ${ms(row.iceDtls)} + first frame ${ms(row.firstFrame)}`,
      );
      rows.push(row);
      const room = await staff.get(`/api/clinics/${CLINIC}/room`);
      for (const c of room.consultations) {
        await staff.post('/api/commands', { type: 'end_consultation', clinic: CLINIC, consultation: c.id });
      }
      await h.closePages(row.page, clinician);
    }

    const phases = ['signalling', 'iceDtls', 'firstFrame', 'total'];
    const summary = phases
      .map((p) => {
        const v = rows.map((r) => r[p]);
        return `${p}_p50_ms=${Math.round(percentile(v, 50))} ${p}_p95_ms=${Math.round(percentile(v, 95))}`;
      })
      .join(' ');
    console.log(`join-time patient=${PATIENT_BROWSER} joins=${rows.length} ${summary}`);
    for (const r of rows) {
      assert.ok(r.signalling > 0 && r.iceDtls >= 0 && r.firstFrame >= 0, `phases in order: ${JSON.stringify(r)}`);
      assert.ok(Math.abs(r.signalling + r.iceDtls + r.firstFrame - r.total) < 1, 'the phases add up');
    }
    // What a patient would put up with: the call is on screen within 5 s of the link.
    assert.ok(percentile(rows.map((r) => r.total), 95) < 5000, `p95 join time under 5 s: ${summary}`);
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors in the pages');
  });
});
