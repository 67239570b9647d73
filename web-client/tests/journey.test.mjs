// Issue 4's whole journey, every person on their own real page: reception signs in; a
// patient opens the clinic's link, passes the pre-call check, gives their name and waits;
// reception sees the arrival and messages them (the patient sees it); reception admits
// them to a signed-in clinician; clinician and patient each decode the other's video and
// receive audio; the clinician ends the call; both pages say it ended.
//
// Run by scripts/browser-tests (inside a private network namespace), or directly:
//   cd web-client && node --test tests/journey.test.mjs

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import * as h from './harness.mjs';
import * as p from './patient-helpers.mjs';
import * as s from './staff-helpers.mjs';

h.watchdog(90);

let browser;
before(async () => {
  browser = await h.launchBrowser();
});
after(async () => {
  await browser?.close();
});

const button = (page, name) => page.getByRole('button', { name, exact: true });
const inDialog = (page, name) => page.locator('#dlg').getByRole('button', { name, exact: true });

test('reception, a patient and a clinician: from the link to the end of the call', async () => {
  await s.withStaffEnv('journey', async (env) => {
    const pf = await s.platform(env, {
      clinics: [['derm', 'Dermatology']],
      staff: [
        ['rita', 'Rita Reception', 'reception', ['derm']],
        ['dr.jones', 'Dr Jones', 'clinician', ['derm']],
      ],
    });

    // Reception and the clinician sign in through their pages.
    const rec = await s.openPage(browser, env, pf.url, 'reception');
    await s.signIn(rec, 'rita', pf.passwords.rita);
    await s.waitStaff(rec, (x) => x.socket === 'open' && x.role === 'reception', 'reception board');
    const doc = await s.openPage(browser, env, pf.url, 'clinician');
    await s.signIn(doc, 'dr.jones', pf.passwords['dr.jones']);
    await s.waitStaff(doc, (x) => x.socket === 'open' && x.role === 'clinician', 'clinician board');

    // The patient opens the clinic's link, passes the check, gives a name and waits.
    const patient = await p.openPatient(browser, env, pf.url, '/c/derm', 'patient');
    const { waiting } = await p.enterWaitingRoom(patient, 'Pat Journey', 'patient');
    assert.equal(waiting.screen, 'waiting');

    // Reception sees the arrival and messages the patient, who sees the message.
    await s.waitStaff(
      rec,
      (x) => s.clinic(x, 'derm').waiting.some((v) => v.name === 'Pat Journey' && v.online),
      'reception sees the patient arrive, online',
    );
    const text = 'Dr Jones will see you in a few minutes.';
    await button(rec, 'Message… Pat Journey').click();
    await rec.getByLabel('Message', { exact: true }).fill(text);
    await inDialog(rec, 'Send message').click();
    await p.waitPatient(patient, (x) => x.messages.includes(text), 'the patient sees the message');

    // Reception admits the patient to the clinician; media connects with no click.
    await button(rec, 'Admit… Pat Journey').click();
    await rec.getByLabel('Clinician', { exact: true }).selectOption('dr.jones');
    const admittedAt = performance.now();
    await inDialog(rec, 'Admit').click();
    // The clinician's call starts by itself; their camera and microphone start with
    // their press (the page asks for them only after one).
    await button(doc, 'Turn on camera and microphone').click();
    const [c, pt] = await Promise.all([
      h.waitFor(doc, h.receiving, 'the clinician decodes the patient', 30_000, h.staffStats),
      h.waitFor(patient, h.receiving, 'the patient decodes the clinician', 30_000, h.patientStats),
    ]);
    console.log(
      `reception's admit -> decoding: clinician ${Math.round(c.at - admittedAt)} ms, patient ${Math.round(pt.at - admittedAt)} ms`,
    );
    await p.waitPatient(patient, (x) => x.screen === 'call' && x.remoteVideos === 1, 'the patient is in the call');

    // The clinician ends the call; both pages say so, and reception's board is empty.
    await button(doc, 'End call').click();
    await inDialog(doc, 'End call').click();
    await s.waitStaff(doc, (x) => x.callEnded && x.remoteVideos === 0, 'the clinician sees the call ended');
    await p.waitPatient(patient, (x) => x.screen === 'ended' && x.remoteVideos === 0, 'the patient sees the call ended');
    await s.waitStaff(rec, (x) => s.clinic(x, 'derm').waiting.length === 0, 'reception board empty');
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors in any page');
  });
});
