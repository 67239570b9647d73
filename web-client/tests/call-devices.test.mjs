// Issue 12, what iOS Safari needs of the pages, shown where Safari cannot run (Chromium):
//   1. camera and microphone are asked for only after a press, on the patient's, the
//      staff and the call page; every <video> plays inline (self views muted);
//   2. sound the browser refuses before a press: every page offers "Tap to turn on sound";
//   3. the camera is given back while the page is hidden and taken again when it shows,
//      without leaving the call (the other side stops and restarts decoding it);
//   4. front and back camera: "Switch camera" only where there are two, and the other
//      side then receives the other camera;
//   5. devices changing mid-call: a camera or microphone unplugged is replaced by
//      another, or the person is told; a headset plugged in is used.
// Devices and visibility are emulated by init scripts (fake-devices.mjs): Chromium's fake
// devices cannot be unplugged, and headless Chromium never hides a page.
//
//   scripts/browser-tests tests/call-devices.test.mjs

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import * as h from './harness.mjs';
import * as p from './patient-helpers.mjs';
import * as s from './staff-helpers.mjs';
import { countGetUserMedia, fakeDevices, fakeVisibility, remoteColour, soundAfterPress } from './fake-devices.mjs';

h.watchdog(240);

const CLINIC = 'derm';
const STAFF = [
  ['rita', 'Rita Reception', 'reception', [CLINIC]],
  ['dr.jones', 'Dr Jones', 'clinician', [CLINIC]],
  ['dr.smith', 'Dr Smith', 'clinician', [CLINIC]],
];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let browser;
before(async () => {
  browser = await h.launchBrowser();
});
after(async () => {
  await browser?.close();
  console.log(`axe-core: ${p.axeResults.map((r) => `${r.state} ${r.violations} violations`).join('; ')}`);
});

const button = (page, name) => page.getByRole('button', { name, exact: true });

/** A staff page in a context of its own, with init scripts, signed in through the form. */
async function staffPage(env, pf, username, { init = [], contextOptions = {} } = {}) {
  const context = await browser.newContext({ viewport: s.DESKTOP, ...contextOptions });
  env.contexts.push(context);
  for (const [fn, arg] of init) await context.addInitScript(fn, arg);
  const page = await context.newPage();
  env.staffPages ??= new Map();
  env.staffPages.set(username, page);
  page.on('console', (m) => env.log.push(`[${username}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => {
    env.pageErrors.push(`[${username}] ${e.message}`);
    env.log.push(`[${username}] PAGE ERROR: ${e.stack || e.message}`);
  });
  await page.goto(`${pf.url}/staff`);
  await s.signIn(page, username, pf.passwords[username]);
  await s.waitStaff(page, (x) => x.socket === 'open' && x.clinics.length === 1, `${username} signed in`);
  return page;
}

/** A patient's page in a context of its own with init scripts; through the check to waiting. */
async function patientPage(env, pf, name, { init = [] } = {}) {
  const context = await browser.newContext();
  env.contexts.push(context);
  for (const [fn, arg] of init) await context.addInitScript(fn, arg);
  const page = await p.openPatient(browser, env, pf.url, `/c/${CLINIC}`, name, { context });
  const { waiting } = await p.enterWaitingRoom(page, name, name);
  return { page, visit: waiting.visit };
}

/** Reception's REST client. */
async function reception(pf) {
  const { token } = await h.rest(pf.url).post('/api/staff/sign-in', { username: 'rita', password: pf.passwords.rita });
  return h.rest(pf.url, token);
}

/** A patient page admitted to a clinician on call.html; both decoding each other. */
async function patientInCall(env, pf, { init = [] } = {}) {
  const { token } = await h.rest(pf.url).post('/api/staff/sign-in', { username: 'dr.jones', password: pf.passwords['dr.jones'] });
  const clinician = await h.openCall(browser, env, pf.url, token, 'clinician');
  await h.waitForState(clinician, (x) => x.socket === 'open' && x.role === 'clinician', 'clinician page signed in');
  const { page } = await patientPage(env, pf, 'Pat Phone', { init });
  await h.rest(pf.url, token).post('/api/commands', { type: 'admit_next', clinic: CLINIC });
  await Promise.all([
    p.waitPatientStats(page, h.receiving, 'the patient receives the clinician'),
    h.waitFor(clinician, h.receiving, 'the clinician receives the patient', 30_000),
  ]);
  return { page, clinician };
}

/** Video frames the page decodes over `ms`. */
async function framesOver(page, ms, read = () => window.consultCall.stats()) {
  const a = (await page.evaluate(read)).inboundVideo.framesDecoded;
  await sleep(ms);
  return (await page.evaluate(read)).inboundVideo.framesDecoded - a;
}

/** Every <video> of the page plays inline, starts by itself; self views are muted. */
async function inlineVideos(page, label, least = 2) {
  const videos = await page.evaluate(() =>
    [...document.querySelectorAll('video')].map((v) => ({
      id: v.id || v.closest('figure')?.dataset.stream || '?',
      playsinline: v.hasAttribute('playsinline') && v.playsInline,
      autoplay: v.autoplay,
      muted: v.muted,
      self: v.id === 'self-view' || v.id === 'preview',
    })),
  );
  assert.ok(videos.length >= least, `${label}: videos found: ${JSON.stringify(videos)}`);
  for (const v of videos) {
    assert.ok(v.playsinline && v.autoplay, `${label}: video ${v.id} plays inline and by itself`);
    if (v.self) assert.ok(v.muted, `${label}: the self view ${v.id} is muted`);
  }
  return videos.length;
}

test('camera and microphone only after a press, on every page; every video plays inline', async () => {
  await s.withStaffEnv('asked after a press', async (env) => {
    const pf = await s.platform(env, { clinics: [[CLINIC, 'Dermatology']], staff: STAFF });
    const count = [[countGetUserMedia]];
    const gum = (page) => page.evaluate(() => window.__gumCalls);

    // The patient's page: the check waits for the press.
    const context = await browser.newContext();
    env.contexts.push(context);
    await context.addInitScript(countGetUserMedia);
    const patient = await p.openPatient(browser, env, pf.url, `/c/${CLINIC}`, 'patient', { context });
    await p.waitPatient(patient, (x) => x.screen === 'check', 'the check');
    await sleep(1000);
    assert.equal(await gum(patient), 0, 'the patient page asked for nothing on load');
    await p.enterWaitingRoom(patient, 'Pat Press', 'patient');
    assert.ok((await gum(patient)) > 0, 'asked after the press');

    // The staff page: a patient admitted by reception starts the clinician's call, which
    // receives; the camera and microphone wait for the clinician's press.
    const doc = await staffPage(env, pf, 'dr.jones', { init: count });
    const waiting = (await (await reception(pf)).get(`/api/clinics/${CLINIC}/room`)).visits[0];
    await (await reception(pf)).post('/api/commands', { type: 'admit', clinic: CLINIC, visit: waiting.id, clinician: 'dr.jones' });
    await h.waitFor(doc, (x) => x.inboundVideo.framesDecoded > 0, 'the clinician receives before pressing anything', 30_000, h.staffStats);
    assert.equal(await gum(doc), 0, 'the staff page asked for nothing by itself');
    assert.equal((await doc.evaluate(() => window.consultStaff.stats())).senders.video, null, 'nothing sent yet');
    await button(doc, 'Turn on camera and microphone').click();
    await p.waitPatientStats(patient, h.receiving, 'the patient receives the clinician after the press');
    assert.ok((await gum(doc)) > 0);
    await s.waitStaff(doc, (x) => x.selfView === 'camera' && x.devices.tracks === 2, 'the self view shows the camera');
    await s.axe(doc, 'staff call: devices on after the press');

    // call.html: a waiting patient's page; the button asks.
    const other = await s.enter(pf.url, CLINIC, 'Cal Page');
    const call = await h.openCall(browser, env, pf.url, other.visit_token, 'call page', { initScript: countGetUserMedia, devices: false });
    await h.waitForState(call, (x) => x.patient === 'waiting', 'call page waiting');
    await sleep(500);
    assert.equal(await gum(call), 0, 'call.html asked for nothing on load');
    await button(call, 'Turn on camera and microphone').click();
    await h.waitForState(call, (x) => x.devices.tracks === 2 && x.selfView === 'camera', 'call.html devices on');
    assert.ok((await gum(call)) > 0);

    // Every video plays inline (iOS Safari would otherwise open a full-screen player).
    await p.waitPatient(patient, (x) => x.screen === 'call' && x.remoteVideos === 1, 'the patient sees the clinician');
    const n = (await inlineVideos(patient, 'patient page')) + (await inlineVideos(doc, 'staff page')) + (await inlineVideos(call, 'call page (waiting)', 1));
    console.log(`inline: ${n} videos on three pages, every one playsinline and autoplay, self views muted`);
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');
  });
});

test('sound refused until a press: every page offers "Tap to turn on sound"', async () => {
  await s.withStaffEnv('sound after a press', async (env) => {
    const pf = await s.platform(env, { clinics: [[CLINIC, 'Dermatology']], staff: STAFF });
    const { token } = await h.rest(pf.url).post('/api/staff/sign-in', { username: 'dr.jones', password: pf.passwords['dr.jones'] });
    // The clinician presses "Turn on camera and microphone": sound is allowed there.
    const clinician = await h.openCall(browser, env, pf.url, token, 'clinician', { initScript: soundAfterPress });
    await h.waitForState(clinician, (x) => x.socket === 'open', 'clinician signed in');
    // A patient on call.html who has pressed nothing.
    const entered = await s.enter(pf.url, CLINIC, 'Sam Silent');
    const patient = await h.openCall(browser, env, pf.url, entered.visit_token, 'patient', { initScript: soundAfterPress, devices: false });
    await h.waitForState(patient, (x) => x.patient === 'waiting', 'patient waiting');
    await h.rest(pf.url, token).post('/api/commands', { type: 'admit_next', clinic: CLINIC });
    await h.waitForState(patient, (x) => x.remoteVideos === 1 && x.soundBlocked, 'the call page plays without sound', 30_000);
    const tap = patient.getByRole('button', { name: 'Tap to turn on sound' });
    await tap.waitFor();
    await p.axeCheck(patient, 'call.html: sound refused');
    await tap.click();
    await h.waitForState(patient, (x) => !x.soundBlocked, 'sound on');
    const played = await patient.evaluate(() => [...document.querySelectorAll('#remote video')].map((v) => ({ muted: v.muted, paused: v.paused })));
    assert.deepEqual(played, [{ muted: false, paused: false }], 'the tile plays with sound');
    assert.equal(await tap.count(), 0, 'the button is gone');
    // The clinician, who pressed a button before, hears the patient at once.
    await button(patient, 'Turn on camera and microphone').click();
    await h.waitForState(clinician, (x) => x.remoteVideos === 1, 'the clinician sees the patient tile', 30_000);
    await sleep(300);
    assert.equal((await clinician.evaluate(() => window.consultCall.state())).soundBlocked, false, 'after a press the sound plays');

    // The staff page, reloaded before the call (the session is kept for the tab; the
    // press of signing in is not).
    const staff = await staffPage(env, pf, 'dr.smith', { init: [[soundAfterPress]] });
    await staff.reload();
    await s.waitStaff(staff, (x) => x.socket === 'open', 'dr.smith board after the reload');
    const next = await s.enter(pf.url, CLINIC, 'Nell Next');
    const nextPage = await h.openCall(browser, env, pf.url, next.visit_token, 'next patient');
    await h.waitForState(nextPage, (x) => x.patient === 'waiting', 'next patient waiting');
    await (await reception(pf)).post('/api/commands', { type: 'admit', clinic: CLINIC, visit: next.visit, clinician: 'dr.smith' });
    await s.waitStaff(staff, (x) => x.remoteVideos === 1 && x.soundBlocked, 'the staff page plays without sound', 30_000);
    await s.axe(staff, 'staff call: sound refused');
    await button(staff, 'Tap to turn on sound').click();
    await s.waitStaff(staff, (x) => !x.soundBlocked, 'the staff page plays with sound');
    assert.deepEqual(await staff.evaluate(() => [...document.querySelectorAll('#remote video')].map((v) => [v.muted, v.paused])), [[false, false]]);

    // The patient's own page, reloaded in the call.
    const own = await browser.newContext();
    env.contexts.push(own);
    await own.addInitScript(soundAfterPress);
    const page = await p.openPatient(browser, env, pf.url, `/c/${CLINIC}`, 'patient page', { context: own });
    await p.enterWaitingRoom(page, 'Pia Page', 'patient page');
    const visit = (await page.evaluate(() => window.consultPatient.state())).visit;
    // Into the call dr.jones's call page is in (with Sam Silent).
    const joined = (await clinician.evaluate(() => window.consultCall.state())).consultation;
    await (await reception(pf)).post('/api/commands', { type: 'admit', clinic: CLINIC, visit, clinician: 'dr.jones', consultation: joined });
    await p.waitPatient(page, (x) => x.remoteVideos >= 1 && !x.soundBlocked, 'the patient page in the call, with sound (pressed before)', 30_000);
    await page.reload();
    await p.waitPatient(page, (x) => x.remoteVideos >= 1 && x.soundBlocked, 'after the reload the page plays without sound', 30_000);
    // One button per silent tile; one press turns the sound on in all of them.
    await page.getByRole('button', { name: 'Tap to turn on sound' }).first().waitFor();
    await p.axeCheck(page, 'patient call: sound refused');
    await page.getByRole('button', { name: 'Tap to turn on sound' }).first().click();
    await p.waitPatient(page, (x) => !x.soundBlocked, 'sound on');
    const tiles = await page.evaluate(() => [...document.querySelectorAll('#remote video')].map((v) => [v.muted, v.paused]));
    assert.ok(tiles.length >= 1 && tiles.every(([muted, paused]) => !muted && !paused), `every tile plays with sound: ${JSON.stringify(tiles)}`);
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');
  });
});

test('the camera is given back while the page is hidden and taken again when it shows', async () => {
  await s.withStaffEnv('hidden page', async (env) => {
    const pf = await s.platform(env, { clinics: [[CLINIC, 'Dermatology']], staff: STAFF });
    const { page, clinician } = await patientInCall(env, pf, { init: [[fakeVisibility], [fakeDevices]] });
    assert.ok((await framesOver(clinician, 1000)) > 0, 'the clinician decodes the patient');

    await page.evaluate(() => window.__setVisibility('hidden'));
    const hidden = await p.waitPatient(page, (x) => x.local.hidden && x.local.tracks === 1, 'the camera given back');
    assert.deepEqual(await page.evaluate(() => window.__devices.capturing()), ['mic-builtin'], 'only the microphone still captures: the camera light is off');
    assert.equal(hidden.sent.video, false, 'the others are told: camera off');
    await p.waitPatientStats(page, (x) => x.senders.video === null && x.senders.audio?.readyState === 'live', 'nothing sent for the camera, the microphone goes on');
    await h.waitForState(clinician, (x) => x.tiles[0]?.video === false, 'the clinician\'s tile says "Camera off"');
    assert.ok(await clinician.locator('#remote .tile-off').getByText('Camera off').isVisible());
    await sleep(500); // what was in flight arrives
    assert.equal(await framesOver(clinician, 1500), 0, 'the clinician receives no more video frames');

    await page.evaluate(() => window.__setVisibility('visible'));
    const shown = await p.waitPatient(page, (x) => !x.local.hidden && x.local.tracks === 2 && x.selfView === 'camera', 'the camera taken again');
    assert.equal(shown.sent.video, true);
    await h.waitForState(clinician, (x) => x.tiles[0]?.video === true, 'the clinician\'s tile shows the picture again');
    assert.ok((await framesOver(clinician, 1500)) > 0, 'the clinician decodes the patient again');
    const joins = await page.evaluate(() => window.consultPatient.messages().filter((m) => m.type === 'join_media').length);
    assert.equal(joins, 1, 'without leaving or joining the call again');

    // A clinician at a desk keeps their camera in another tab (the patient record, say);
    // on a tablet (touch emulation: no hover, a coarse pointer) it is given back.
    const doc = await staffPage(env, pf, 'dr.smith', { init: [[fakeVisibility]] });
    const entered = await s.enter(pf.url, CLINIC, 'Desk Patient');
    await h.openCall(browser, env, pf.url, entered.visit_token, 'desk patient');
    await s.waitStaff(doc, (x) => s.clinic(x, CLINIC).waiting.some((v) => v.name === 'Desk Patient'), 'the patient waiting');
    await button(doc, 'Call in Desk Patient').click();
    await s.waitStaff(doc, (x) => x.media === 'connected' && x.devices.tracks === 2, 'in the call with camera and microphone', 30_000);
    await doc.evaluate(() => window.__setVisibility('hidden'));
    await sleep(500);
    const desk = (await doc.evaluate(() => window.consultStaff.state())).devices;
    assert.deepEqual([desk.hidden, desk.tracks], [false, 2], 'at a desk the camera stays on in another tab');
    await doc.evaluate(() => window.__setVisibility('visible'));
    const cdp = await doc.context().newCDPSession(doc);
    await cdp.send('Emulation.setTouchEmulationEnabled', { enabled: true, maxTouchPoints: 5 });
    assert.ok(await doc.evaluate(() => matchMedia('(hover: none) and (pointer: coarse)').matches), 'a touch device now');
    await doc.evaluate(() => window.__setVisibility('hidden'));
    await s.waitStaff(doc, (x) => x.devices.hidden && x.devices.tracks === 1 && x.sent?.video === false, 'a tablet gives the camera back');
    await doc.evaluate(() => window.__setVisibility('visible'));
    await s.waitStaff(doc, (x) => !x.devices.hidden && x.devices.tracks === 2 && x.selfView === 'camera', 'and takes it again');
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');
  });
});

test('front and back camera: "Switch camera" only with two, and the other side gets the other one', async () => {
  await s.withStaffEnv('switch camera', async (env) => {
    const pf = await s.platform(env, { clinics: [[CLINIC, 'Dermatology']], staff: STAFF });
    const { page, clinician } = await patientInCall(env, pf, { init: [[fakeDevices]] });
    const red = (c) => c && c[0] > 150 && c[1] < 100;
    const green = (c) => c && c[1] > 120 && c[0] < 100;
    await h.waitFor(clinician, red, 'the clinician sees the front camera (red)', 10_000, remoteColour);
    let st = await p.waitPatient(page, (x) => x.local.facing === 'user', 'the front camera');
    assert.equal(st.local.cameraDevice, 'cam-front');
    assert.ok(await page.locator('#self-figure.mirrored').count(), 'the front camera is shown as in a mirror');

    await button(page, 'Switch camera').click();
    st = await p.waitPatient(page, (x) => x.local.facing === 'environment', 'the back camera');
    assert.equal(st.local.cameraDevice, 'cam-back');
    assert.ok(st.announced.includes('Now using your back camera.'));
    await h.waitFor(clinician, green, 'the clinician sees the back camera (green)', 10_000, remoteColour);
    assert.deepEqual(await page.evaluate(() => window.__devices.capturing().filter((d) => d.startsWith('cam-'))), ['cam-back'], 'one camera at a time');
    const asked = await page.evaluate(() => window.__devices.calls.at(-1));
    assert.deepEqual(asked.video.facingMode, { exact: 'environment' }, 'asked for by facing, as on a phone');
    assert.equal(await page.locator('#self-figure.mirrored').count(), 0, 'the back camera is not mirrored');
    await p.axeCheck(page, 'call: back camera');

    await button(page, 'Switch camera').click();
    await p.waitPatient(page, (x) => x.local.facing === 'user', 'the front camera again');
    await h.waitFor(clinician, red, 'the clinician sees the front camera again', 10_000, remoteColour);
    const joins = await page.evaluate(() => window.consultPatient.messages().filter((m) => m.type === 'join_media').length);
    assert.equal(joins, 1, 'switched within the call');

    // One camera (Chromium's own fake device): no switch is offered.
    assert.equal(await clinician.getByRole('button', { name: 'Switch camera' }).isVisible(), false);
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');
  });
});

test('devices changing mid-call: unplugged ones replaced or said, a headset plugged in is used', async () => {
  await s.withStaffEnv('devices change', async (env) => {
    const pf = await s.platform(env, { clinics: [[CLINIC, 'Dermatology']], staff: STAFF });
    const { page, clinician } = await patientInCall(env, pf, { init: [[fakeDevices]] });
    const red = (c) => c && c[0] > 150 && c[1] < 100;
    const green = (c) => c && c[1] > 120 && c[0] < 100;
    const note = () => page.locator('#device-note').innerText();
    await h.waitFor(clinician, red, 'the clinician sees the front camera', 10_000, remoteColour);

    // The camera in use is unplugged: the other one takes over.
    await page.evaluate(() => window.__devices.unplug('cam-front'));
    await p.waitPatient(page, (x) => x.local.cameraDevice === 'cam-back', 'the other camera in use');
    await h.waitFor(clinician, green, 'the clinician sees the other camera', 10_000, remoteColour);
    assert.equal(await note(), 'Your camera was disconnected. We are using your other camera.');

    // ... and that one too: none left. The patient is told; nothing is sent.
    await page.evaluate(() => window.__devices.unplug('cam-back'));
    let st = await p.waitPatient(page, (x) => x.local.camera === 'missing' && x.selfView === 'off', 'no camera left');
    assert.match(await note(), /Your camera was disconnected, and there is no other\. The clinic cannot see you/);
    assert.equal(st.sent.video, false, 'the others are told: camera off');
    await p.waitPatientStats(page, (x) => x.senders.video === null, 'no video sent');
    await h.waitForState(clinician, (x) => x.tiles[0]?.video === false, 'the clinician sees "Camera off"');
    await p.axeCheck(page, 'call: camera unplugged');

    // A headset is plugged in and becomes the default microphone: it is used.
    const before = (await clinician.evaluate(() => window.consultCall.stats())).inboundAudio.packetsReceived;
    await page.evaluate(() => window.__devices.plug({ deviceId: 'mic-headset', kind: 'audioinput', label: 'Headset microphone' }, { makeDefault: true }));
    st = await p.waitPatient(page, (x) => x.local.micDevice === 'mic-headset', 'the headset microphone in use');
    assert.equal(await note(), 'Now using the microphone you plugged in.');
    await p.waitPatientStats(page, (x) => x.senders.audio?.readyState === 'live', 'the headset is sent');
    await h.waitFor(clinician, (x) => x.inboundAudio.packetsReceived > before + 50, 'the clinician goes on hearing the patient', 10_000);

    // The headset unplugged: back to the built-in microphone.
    await page.evaluate(() => window.__devices.unplug('mic-headset'));
    await p.waitPatient(page, (x) => x.local.micDevice === 'mic-builtin', 'the built-in microphone again');
    assert.equal(await note(), 'Your microphone was disconnected. We are using your other microphone.');

    // The last microphone unplugged: the others are told the patient is muted.
    await page.evaluate(() => window.__devices.unplug('mic-builtin'));
    st = await p.waitPatient(page, (x) => x.local.microphone === 'missing', 'no microphone left');
    assert.match(await note(), /Your microphone was disconnected, and there is no other\. The clinic cannot hear you/);
    assert.deepEqual(st.sent, { audio: false, video: false, screen: false });
    await h.waitForState(clinician, (x) => x.tiles[0]?.audio === false, 'the clinician sees "Muted"');
    await clinician.locator('#remote figure.tile').getByText('Muted', { exact: true }).waitFor();

    // A camera plugged in where there was none: it is used.
    await page.evaluate(() => window.__devices.plug({ deviceId: 'cam-usb', kind: 'videoinput', label: 'USB camera', color: [40, 40, 220] }));
    st = await p.waitPatient(page, (x) => x.local.cameraDevice === 'cam-usb' && x.selfView === 'camera', 'the new camera in use');
    assert.equal(st.sent.video, true);
    await h.waitForState(clinician, (x) => x.tiles[0]?.video === true, 'the clinician\'s tile shows the picture again');
    await h.waitFor(clinician, (c) => c && c[2] > 150 && c[0] < 100, 'the clinician sees the new camera (blue)', 10_000, remoteColour);
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');
  });
});
