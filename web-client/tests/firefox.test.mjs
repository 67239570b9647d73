// Issue 12: a second real browser engine. The patient journey with Debian's firefox-esr
// (driven over WebDriver BiDi, firefox.mjs) on one side and Chromium on the other, both
// ways round: the patient opens the clinic's link, passes the pre-call check (its
// connection check reaches the SFU), enters the waiting room; the clinician, signed in on
// the staff page, calls them in; the call connects with no click, and each side decodes
// the other's video and receives its audio; the clinician ends the call and both pages
// say so. One browser process per engine for the whole file.
//
// Run by scripts/browser-tests (inside a private network namespace), or:
//   scripts/browser-tests tests/firefox.test.mjs

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import * as h from './harness.mjs';
import * as p from './patient-helpers.mjs';
import * as s from './staff-helpers.mjs';

h.watchdog(150);

const browsers = {};
before(async () => {
  [browsers.chromium, browsers.firefox] = await Promise.all(h.ENGINES.map((e) => h.launchBrowser(e)));
  console.log(`chromium ${browsers.chromium.version()}, ${browsers.firefox.version()}`);
});
after(async () => {
  await Promise.all(Object.values(browsers).map((b) => b.close()));
});

/** Camera and microphone sent. */
const sending = (x) => x.outboundVideo.packetsSent > 0 && x.outboundAudio.packetsSent > 0;
/** Every video on the page with a stream (one's own and the other's) plays a picture. */
const videosPlaying = () =>
  [...document.querySelectorAll('video')].filter((v) => v.srcObject).map((v) => !v.paused && v.videoWidth > 0);
const allPlaying = (v) => v.length === 2 && v.every(Boolean);

/** Over 3 s, the other side's sound arrives and decodes: at least 2 s of it, under 10 % concealed. */
async function soundDecodes(page, stats, label) {
  const a = (await page.evaluate(stats)).inboundAudio;
  await h.sleep(3000);
  const b = (await page.evaluate(stats)).inboundAudio;
  const samples = b.totalSamplesReceived - a.totalSamplesReceived;
  const concealed = b.concealedSamples - a.concealedSamples;
  console.log(`${label} hears: ${samples} samples in 3 s, ${concealed} concealed`);
  assert.ok(samples >= 2 * 48_000, `${label} received ${samples} samples of sound in 3 s`);
  assert.ok(concealed < 0.1 * samples, `${label}: ${concealed} of ${samples} samples concealed`);
}

/** The journey with the patient in one engine and the clinician in the other. */
async function journey(env, patientEngine, clinicianEngine) {
  const pf = await s.platform(env, {
    clinics: [['derm', 'Dermatology']],
    staff: [['dr.jones', 'Dr Jones', 'clinician', ['derm']]],
  });

  const doc = await s.openPage(browsers[clinicianEngine], env, pf.url, `clinician (${clinicianEngine})`);
  await s.signIn(doc, 'dr.jones', pf.passwords['dr.jones']);
  await s.waitStaff(doc, (x) => x.socket === 'open' && x.role === 'clinician', 'the clinician is signed in');

  const patient = await p.openPatient(browsers[patientEngine], env, pf.url, '/c/derm', `patient (${patientEngine})`);
  const { checked } = await p.enterWaitingRoom(patient, 'Pat Engine', 'patient');
  // The check's connection reached the SFU and its media arrived there, over UDP.
  assert.equal(checked.check.network, 'ok');
  assert.equal(checked.check.via, 'udp');

  await s.waitStaff(
    doc,
    (x) => s.clinic(x, 'derm').waiting.some((v) => v.name === 'Pat Engine' && v.online),
    'the clinician sees the patient waiting, online',
  );
  const calledAt = performance.now();
  await doc.getByRole('button', { name: 'Call next patient in Dermatology', exact: true }).click();
  const [c, pt] = await Promise.all([
    h.waitFor(doc, h.receiving, `the clinician (${clinicianEngine}) decodes the patient`, 30_000, h.staffStats),
    h.waitFor(patient, h.receiving, `the patient (${patientEngine}) decodes the clinician`, 30_000, h.patientStats),
  ]);
  console.log(
    `${patientEngine} patient, ${clinicianEngine} clinician: called in -> decoding: clinician ` +
      `${Math.round(c.at - calledAt)} ms, patient ${Math.round(pt.at - calledAt)} ms ` +
      `(clinician ${JSON.stringify(c.value.inboundVideo)}, patient ${JSON.stringify(pt.value.inboundVideo)})`,
  );
  await p.waitPatient(patient, (x) => x.screen === 'call' && x.remoteVideos === 1, 'the patient sees the call');
  await s.waitStaff(doc, (x) => x.remoteVideos === 1, 'the clinician sees the patient');
  await h.waitFor(doc, sending, 'the clinician sends camera and microphone', 10_000, h.staffStats);
  await h.waitFor(patient, sending, 'the patient sends camera and microphone', 10_000, h.patientStats);
  await h.waitFor(doc, allPlaying, 'the clinician sees both pictures play', 10_000, videosPlaying);
  await h.waitFor(patient, allPlaying, 'the patient sees both pictures play', 10_000, videosPlaying);
  // Each hears the other: Chromium sends its sound in RED, which the SFU passes on to a
  // Firefox that did not take RED as its plain Opus; it must decode, not be concealed.
  await Promise.all([
    soundDecodes(doc, h.staffStats, `the clinician (${clinicianEngine})`),
    soundDecodes(patient, h.patientStats, `the patient (${patientEngine})`),
  ]);

  await doc.getByRole('button', { name: 'End call', exact: true }).click();
  await doc.locator('#dlg').getByRole('button', { name: 'End call', exact: true }).click();
  await s.waitStaff(doc, (x) => x.callEnded && x.remoteVideos === 0, 'the clinician sees the call ended');
  await p.waitPatient(patient, (x) => x.screen === 'ended' && x.remoteVideos === 0, 'the patient sees the call ended');
  assert.deepEqual(env.pageErrors, [], 'no JavaScript errors in either page');
}

/** Runs the journey; on failure prints both pages' state, messages and stats. */
function run(patientEngine, clinicianEngine) {
  return s.withCallEnv(`${patientEngine} patient, ${clinicianEngine} clinician`, (env) =>
    journey(env, patientEngine, clinicianEngine),
  );
}

test('a Firefox patient and a Chromium clinician: check, wait, called in, both decode', () => run('firefox', 'chromium'));

test('a Chromium patient and a Firefox clinician: check, wait, called in, both decode', () => run('chromium', 'firefox'));
