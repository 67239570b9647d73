// Issue 12, a call that explains itself, in real pages (Chromium, fake devices) against
// `consult serve` with its in-process SFU:
//   1. no stale text in hidden live regions: the patient's "You have left" page, the
//      clinician's page after a call and after signing out;
//   2. the clinician's own view with the camera off ("Your camera is off", never a frozen
//      picture) and while sharing the screen (the screen itself, never black);
//   3. mute and camera off seen on the other side, in words and with an icon (the
//      patient's tile of the clinician, the clinician's tile of the patient), a shared
//      screen said to the patient, the patient's own muted state visible, a reloaded page
//      told at once; with axe-core and screenshots (patient's view and clinician's, desktop
//      and 375 px wide).
//   4. (issue 15) sound only for everyone: the clinician switches the call; both pages
//      turn their cameras off, receive no video and keep the sound; reception sees it on
//      the board and switches it back; the clinic's call quality shows both people's
//      connections (REST and the board's dialog), with no name.
//
//   scripts/browser-tests tests/call-state.test.mjs

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import * as h from './harness.mjs';
import * as p from './patient-helpers.mjs';
import * as s from './staff-helpers.mjs';

h.watchdog(240);

const CLINIC = 'derm';
const STAFF = [
  ['rita', 'Rita Reception', 'reception', [CLINIC]],
  ['dr.jones', 'Dr Jones', 'clinician', [CLINIC]],
];

let browser;
before(async () => {
  browser = await h.launchBrowser();
});
after(async () => {
  await browser?.close();
  console.log(`axe-core (patient page): ${p.axeResults.map((r) => `${r.state} ${r.violations} violations`).join('; ')}`);
  console.log(`axe-core (staff page): no violations in ${s.axeChecked.join(', ')}`);
});

const button = (page, name) => page.getByRole('button', { name, exact: true });

/** In a page: the live regions inside hidden parts of the page that still hold text. */
function staleLiveRegions() {
  return [...document.querySelectorAll('[role="alert"], [role="status"], [aria-live]')]
    .filter((el) => el.closest('[hidden]') && el.textContent.trim())
    .map((el) => `${el.id || el.className}: ${el.textContent.trim()}`);
}

/** The clinician signed in on the staff page, and a patient on their own page, waiting. */
async function clinicianAndPatient(env) {
  const pf = await s.platform(env, { clinics: [[CLINIC, 'Dermatology']], staff: STAFF });
  const doc = await s.openPage(browser, env, pf.url, 'clinician');
  await s.signIn(doc, 'dr.jones', pf.passwords['dr.jones']);
  await s.waitStaff(doc, (x) => x.socket === 'open' && x.role === 'clinician', 'clinician board');
  const patient = await p.openPatient(browser, env, pf.url, `/c/${CLINIC}`, 'patient');
  const { waiting } = await p.enterWaitingRoom(patient, 'Pat Example', 'patient');
  return { pf, doc, patient, visit: waiting.visit };
}

/** The clinician calls the patient in; both decode each other. */
async function callIn(doc, patient) {
  await s.waitStaff(doc, (x) => s.clinic(x, CLINIC).waiting.some((v) => v.name === 'Pat Example'), 'the patient is waiting');
  await button(doc, 'Call in Pat Example').click();
  await Promise.all([
    h.waitFor(doc, h.receiving, 'the clinician decodes the patient', 30_000, h.staffStats),
    p.waitPatientStats(patient, h.receiving, 'the patient decodes the clinician'),
  ]);
  await p.waitPatient(patient, (x) => x.remoteVideos === 1, 'the patient sees the clinician');
  await s.waitStaff(doc, (x) => x.remoteVideos === 1 && x.selfView === 'camera', 'the clinician sees the patient and themself');
}

test('no stale text in hidden live regions: after leaving, after a call, after signing out', async () => {
  await s.withStaffEnv('live regions', async (env) => {
    const { pf, doc, patient } = await clinicianAndPatient(env);
    await p.waitPatient(patient, (x) => x.announced.some((a) => /You are in the waiting room/.test(a)), 'the waiting room is announced');
    await patient.locator('#announce', { hasText: 'You are in the waiting room' }).waitFor({ state: 'attached' });
    await callIn(doc, patient);
    await patient.locator('#announce', { hasText: 'The clinician has joined' }).waitFor({ state: 'attached' });

    // The patient leaves: "You have left". Nothing of the waiting room or the call is
    // left where a screen reader would still find it.
    await button(patient, 'Leave call').click();
    await button(patient, 'Yes, leave the call').click();
    await p.waitPatient(patient, (x) => x.screen === 'ended' && x.ended === 'left', 'the "You have left" page');
    assert.equal(await patient.locator('#announce').textContent(), '', 'the announcer is empty');
    assert.deepEqual(await patient.evaluate(staleLiveRegions), [], 'no hidden live region holds text');
    const tree = await patient.locator('body').ariaSnapshot();
    for (const stale of ['You are in the waiting room', 'The clinician is joining', 'The clinician has joined', 'Your call is starting']) {
      assert.ok(!tree.includes(stale), `"${stale}" is still in the accessibility tree:\n${tree}`);
    }
    assert.match(tree, /You have left/);
    await p.axeCheck(patient, 'ended (left), live regions empty');

    // The clinician: the call is over (the panel is hidden), then signs out.
    await s.waitStaff(doc, (x) => x.consultation === null && x.callEnded, 'the call has ended for the clinician');
    assert.deepEqual(await doc.evaluate(staleLiveRegions), [], 'no hidden live region holds text after the call');
    await button(doc, 'Sign out').click();
    await s.waitStaff(doc, (x) => x.view === 'sign-in', 'signed out');
    assert.deepEqual(await doc.evaluate(staleLiveRegions), [], 'none after signing out');
    // A wrong password, then the right one: the sign-in's alert does not stay behind.
    await s.signIn(doc, 'dr.jones', 'not the password');
    await s.waitStaff(doc, (x) => x.signInError !== '', 'the wrong password is said');
    await s.signIn(doc, 'dr.jones', pf.passwords['dr.jones']);
    await s.waitStaff(doc, (x) => x.view === 'board' && x.socket === 'open', 'signed in again');
    assert.deepEqual(await doc.evaluate(staleLiveRegions), [], 'none after signing in');
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');
  });
});

test("the clinician's own view: camera off, and sharing the screen", async () => {
  await s.withStaffEnv('own view', async (env) => {
    const { doc, patient } = await clinicianAndPatient(env);
    await callIn(doc, patient);
    const self = doc.locator('#self-figure');

    // Camera off: a calm "Your camera is off" instead of the last frame, frozen.
    await button(doc, 'Camera off').click();
    await s.waitStaff(doc, (x) => x.cameraOff && x.selfView === 'off' && x.sent?.video === false, 'camera off');
    await self.getByText('Your camera is off').waitFor();
    assert.equal(await doc.locator('#self-view').isVisible(), false, 'no frozen picture');
    await h.waitFor(doc, (x) => x.senders.video === null, 'nothing is sent for the camera', 5000, h.staffStats);
    await s.check(doc, 'staff-clinician-camera-off');

    // Sharing the screen (camera still off): the self view shows the screen itself.
    await button(doc, 'Share screen').click();
    const sharing = await s.waitStaff(doc, (x) => x.sharing && x.selfView === 'screen', 'sharing');
    assert.deepEqual(sharing.value.sent, { audio: true, video: true, screen: true }, 'the others are told a screen is shared');
    await self.getByText('You are sharing your screen').waitFor();
    const picture = await h.waitFor(
      doc,
      (x) => x && x.width > 0 && x.bright > 0.02,
      'the self view shows the shared screen, not black',
      10_000,
      () => {
        const v = document.getElementById('self-view');
        if (!v.videoWidth) return null;
        const c = document.createElement('canvas');
        c.width = 64;
        c.height = 36;
        const g = c.getContext('2d');
        g.drawImage(v, 0, 0, 64, 36);
        const d = g.getImageData(0, 0, 64, 36).data;
        let lit = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 60) lit += 1;
        return { width: v.videoWidth, bright: lit / (64 * 36) };
      },
    );
    console.log(`self view while sharing: ${picture.value.width} px wide, ${Math.round(picture.value.bright * 100)} % of it lit`);
    assert.equal(await self.evaluate((f) => f.classList.contains('mirrored')), false, 'a screen is not mirrored');
    await s.check(doc, 'staff-clinician-sharing-self');

    // Stop sharing with the camera off: back to "Your camera is off", nothing sent.
    await button(doc, 'Share screen').click();
    await s.waitStaff(doc, (x) => !x.sharing && x.selfView === 'off', 'not sharing, camera off');
    await h.waitFor(doc, (x) => x.senders.video === null, 'nothing sent again', 5000, h.staffStats);
    await button(doc, 'Camera off').click();
    await s.waitStaff(doc, (x) => !x.cameraOff && x.selfView === 'camera' && x.sent?.video === true, 'the camera on again');
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');
  });
});

test('mute and camera off seen on the other side, a shared screen said, a page joining later told at once', async () => {
  await s.withStaffEnv('the other side', async (env) => {
    const { pf, doc, patient } = await clinicianAndPatient(env);
    await callIn(doc, patient);
    const tile = patient.locator('#remote figure.tile').first();
    const placeholder = tile.locator('.tile-off');

    // The clinician mutes: the patient's tile says so, in words and with an icon.
    await button(doc, 'Mute').click();
    await patient.getByRole('figure', { name: /Muted/ }).waitFor();
    await tile.getByText('Muted', { exact: true }).waitFor();
    assert.ok(await tile.locator('.flag-muted svg.icon-mic-off').isVisible(), 'an icon beside the word');
    let st = await p.waitPatient(patient, (x) => x.tiles[0]?.audio === false && x.tiles[0]?.video === true, 'the tile knows');
    assert.ok(st.announced.includes('The clinician has muted their microphone.'), `and it is announced: ${JSON.stringify(st.announced)}`);
    await p.record(patient, 'call-peer-muted');

    // ... and turns the camera off: a calm "Camera off" instead of a black or frozen picture.
    await button(doc, 'Camera off').click();
    await placeholder.getByText('Camera off').waitFor();
    const [box, video] = [await placeholder.boundingBox(), await tile.locator('video').boundingBox()];
    assert.deepEqual([box.width, box.height].map(Math.round), [video.width, video.height].map(Math.round), 'the placeholder covers the picture');
    st = await p.waitPatient(patient, (x) => x.tiles[0]?.video === false, 'camera off on the tile');
    assert.ok(st.announced.includes('The clinician has turned their camera off.'));
    await p.record(patient, 'call-peer-camera-off');

    // Sharing the screen (camera still off): the patient is told, and sees the screen.
    await button(doc, 'Share screen').click();
    await tile.getByText('The clinician is sharing their screen').waitFor();
    await placeholder.waitFor({ state: 'hidden' });
    await p.record(patient, 'call-peer-sharing');
    await button(doc, 'Share screen').click();
    await placeholder.getByText('Camera off').waitFor();
    await button(doc, 'Camera off').click();
    await button(doc, 'Mute').click();
    await p.waitPatient(patient, (x) => x.tiles[0]?.audio && x.tiles[0]?.video && !x.tiles[0]?.screen, 'all on again');
    assert.ok(await placeholder.isHidden());
    assert.ok(await tile.getByText('Muted', { exact: true }).isHidden());

    // The patient mutes and turns the camera off: the clinician's tile says so, and the
    // patient sees plainly that they are muted.
    await button(patient, 'Mute').click();
    await button(patient, 'Camera off').click();
    const docTile = doc.locator('#remote figure.tile').first();
    await doc.getByRole('figure', { name: /Pat Example.*Muted/ }).waitFor();
    await docTile.locator('.tile-off').getByText('Camera off').waitFor();
    await s.waitStaff(doc, (x) => /Pat Example has (muted their microphone|turned their camera off)/.test(x.status), 'said in the call status');
    assert.ok(await patient.getByText('You are muted: the clinic cannot hear you.').isVisible(), 'the patient sees they are muted');
    assert.ok(await patient.locator('#self-figure').getByText('You are muted').isVisible());
    await p.record(patient, 'call-self-muted');
    await s.check(doc, 'staff-clinician-call-peer-off');

    // The clinician's page reloads (a page joining later): told at once, before or after
    // the patient's tracks arrive.
    await doc.reload();
    await s.waitStaff(doc, (x) => x.remoteVideos === 1 && x.tiles[0]?.audio === false && x.tiles[0]?.video === false, 'told at once after joining again', 30_000);
    await docTile.locator('.tile-off').getByText('Camera off').waitFor();
    const relayed = await doc.evaluate(() => window.consultStaff.messages().filter((m) => m.type === 'peer_media_state').length);
    assert.ok(relayed >= 1, 'the state came from the server (peer_media_state)');
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');
  });
});

test('sound only for everyone: the clinician switches the call, no video either way and the sound goes on; reception switches it back; the clinic reads how the call went', async () => {
  await s.withStaffEnv('sound only', async (env) => {
    const { pf, doc, patient } = await clinicianAndPatient(env);
    await callIn(doc, patient);
    // The clinician's page has the patient's connection indicator too, with the SFU's
    // figures for its downlink.
    await s.waitStaff(doc, (x) => x.quality === 'good' && x.qualityFigures.downKbps > 0, "the clinician's connection: good");
    await doc.locator('#call-quality-text', { hasText: 'Connection: good' }).waitFor();

    await button(doc, 'Sound only for everyone').click();
    await p.waitPatient(patient, (x) => x.soundOnly === 'byStaff' && !x.receiveVideo && x.sent?.video === false, 'the patient page in sound only, its camera off');
    await s.waitStaff(doc, (x) => x.soundOnly === 'byStaff' && !x.receiveVideo && x.cameraOff && x.sent?.video === false, 'the clinician page in sound only, its camera off');
    await patient.locator('#sound-only-text', { hasText: 'The clinic has switched this call to sound only' }).waitFor();
    assert.ok(await patient.locator('#camera').isDisabled(), 'the patient cannot turn the camera on meanwhile');
    assert.equal(await button(doc, 'Turn video back on for everyone').getAttribute('aria-pressed'), 'true');
    // Each side sees the other's camera off, in words.
    await p.waitPatient(patient, (x) => x.tiles.length === 1 && x.tiles[0].video === false, "the patient sees the clinician's camera off");
    await s.waitStaff(doc, (x) => x.tiles.length === 1 && x.tiles[0].video === false, "the clinician sees the patient's camera off");

    // What is on its way arrives; then, over 3 s, no video packet reaches either page and
    // the sound does.
    await h.sleep(1000);
    const before = { patient: await patient.evaluate(h.patientStats), clinician: await doc.evaluate(h.staffStats) };
    await h.sleep(3000);
    const after = { patient: await patient.evaluate(h.patientStats), clinician: await doc.evaluate(h.staffStats) };
    for (const who of ['patient', 'clinician']) {
      const video = after[who].inboundVideo.packetsReceived - before[who].inboundVideo.packetsReceived;
      const audio = after[who].inboundAudio.packetsReceived - before[who].inboundAudio.packetsReceived;
      const sent = after[who].outboundVideo.bytesSent - before[who].outboundVideo.bytesSent;
      assert.ok(video <= 2, `${who}: ${video} video packets received in sound only`);
      assert.ok(sent < 2000, `${who}: ${sent} bytes of video sent in sound only`);
      assert.ok(audio >= 100, `${who}: only ${audio} audio packets in 3 s`);
    }

    // Reception sees the call in sound only on the board, and switches it back (a
    // colleague's call: reception may): both cameras come back on, and each decodes the
    // other again.
    const desk = await s.openPage(browser, env, pf.url, 'reception');
    await s.signIn(desk, 'rita', pf.passwords.rita);
    const card = desk.locator('li.visit', { hasText: 'Pat Example' });
    await card.locator('.badge.sound-only', { hasText: 'Sound only' }).waitFor();
    await card.getByRole('button', { name: 'Turn video back on Pat Example', exact: true }).click();
    await p.waitPatient(patient, (x) => x.soundOnly === null && x.receiveVideo && x.sent?.video === true, 'the patient page back to video');
    await s.waitStaff(doc, (x) => x.soundOnly === null && x.receiveVideo && !x.cameraOff, 'the clinician page back to video');
    const frames = { patient: after.patient.inboundVideo.framesDecoded, clinician: after.clinician.inboundVideo.framesDecoded };
    await Promise.all([
      p.waitPatientStats(patient, (x) => x.inboundVideo.framesDecoded > frames.patient + 30, 'the patient decodes the clinician again', 15_000),
      h.waitFor(doc, (x) => x.inboundVideo.framesDecoded > frames.clinician + 30, 'the clinician decodes the patient again', 15_000, h.staffStats),
    ]);
    assert.ok(!(await patient.locator('#camera').isDisabled()), 'the camera button is back');

    // The support desk's summary: each page reports how its call goes every 10 s; the
    // clinic's staff read it (no names), here with both people's time in sound only.
    const token = (await h.rest(pf.url).post('/api/staff/sign-in', { username: 'rita', password: pf.passwords.rita })).token;
    const quality = () => h.rest(pf.url, token).get(`/api/clinics/${CLINIC}/call-quality`);
    let calls = [];
    const end = Date.now() + 25_000;
    const reported = (cs) => cs.length === 1 && ['patient', 'clinician'].every((role) => cs[0].sessions.some((x) => x.role === role && x.figures.audio_only_ms >= 3000 && x.figures.recv_kbps > 0));
    while (Date.now() < end && !reported(calls)) {
      await h.sleep(1000);
      calls = await quality();
    }
    assert.ok(reported(calls), `no report of both sessions with their time in sound only: ${JSON.stringify(calls)}`);
    for (const x of calls[0].sessions) {
      assert.equal(x.figures.path, 'udp', `${x.role}'s path`);
      assert.ok(x.figures.loss_permille < 50, `${x.role}: ${x.figures.loss_permille} per thousand lost on loopback`);
    }
    assert.ok(!JSON.stringify(calls).includes('Pat Example'), 'a name in the call quality');
    // On the board: the clinic's "Call quality…" shows the call, a line per person.
    await doc.getByRole('button', { name: 'Call quality… in Dermatology', exact: true }).click();
    const table = doc.locator('table.quality-table');
    await table.waitFor();
    assert.deepEqual(await table.locator('tbody th').allTextContents(), calls[0].sessions.map((x) => (x.role === 'patient' ? 'Patient' : 'Clinician')));
    await s.axe(doc, 'the call quality dialog');
    await button(doc, 'Close').click();
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');
  });
});
