// Issue 4, the patient's side, in real Chromium pages (fake camera and microphone) against
// `consult serve` with its in-process SFU:
//   1. the journey: open link -> check -> name -> waiting (a message from reception) ->
//      admitted with no click (media both ways, with the clinician on call.html) -> ended;
//   2. a reload while waiting keeps the visit and its place; a reopened link asks, then
//      returns to the same place; the patient is then admitted and connects;
//   3. a second patient's page never shows or receives anything of the first patient's;
// with axe-core (WCAG 2.0-2.2 A/AA) and screenshots at 1280 and 375 px of each state.
// The error pages are in patient-errors.test.mjs.
//
// Run by scripts/browser-tests (inside a private network namespace), or directly:
//   cd web-client && node --test tests/patient.test.mjs

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import * as h from './harness.mjs';
import * as p from './patient-helpers.mjs';

h.watchdog(100);

const CLINIC = 'dermatology';
const CLINIC_NAME = 'Dermatology follow-up';
const STAFF = {
  alice: { name: 'Alice Reception', role: 'reception', clinics: [CLINIC] },
  'dr.jones': { name: 'Dr Jones', role: 'clinician', clinics: [CLINIC] },
};

let browser;
before(async () => {
  browser = await h.launchBrowser();
});
after(async () => {
  await browser?.close();
  console.log(`axe-core: ${p.axeResults.map((r) => `${r.state} ${r.violations} violations`).join('; ')}`);
});

/** The clinician's call.html page, signed in and waiting for a consultation. */
async function clinicianPage(env, pf) {
  const page = await h.openCall(browser, env, pf.origin, pf.tokens['dr.jones'], 'clinician');
  await h.waitForState(page, (s) => s.socket === 'open' && s.role === 'clinician', 'clinician page signed in');
  return page;
}

async function room(pf) {
  return pf.api.alice.get(`/api/clinics/${CLINIC}/room`);
}

test('the journey: check, name, waiting with a message, admitted with no click, ended', async () => {
  await p.withPatientEnv('patient journey', async (env) => {
    const pf = await p.platform(env, { clinics: [{ id: CLINIC, name: CLINIC_NAME }], staff: STAFF });
    const clinician = await clinicianPage(env, pf);
    const page = await p.openPatient(browser, env, pf.origin, `/c/${CLINIC}`, 'patient');

    // Nothing is asked for on load: the check waits for a press.
    const before = await p.waitPatient(page, (s) => s.screen === 'check', 'the check screen');
    assert.equal(before.local, null, 'no camera or microphone before the press');
    assert.equal(await page.locator('#camera-result').innerText(), 'Not started yet.');
    await p.record(page, 'check-start');
    await p.startCheck(page);

    // The check: camera, microphone, and media reaching the SFU.
    const checked = await p.waitPatient(page, (s) => p.checkPassed(s) && s.check.heard, 'the check passes and hears the microphone', 20_000);
    assert.equal(await page.locator('#mic-result').innerText(), 'We can hear you.');
    assert.equal(checked.clinicName, CLINIC_NAME);
    assert.ok(['udp', 'tcp', 'turn_udp', 'turn_tcp', 'turn_tls'].includes(checked.check.via), `a transport is named: ${checked.check.via}`);
    assert.match(await page.locator('#net-result').innerText(), /connection works/);
    await page.getByRole('button', { name: 'Play a test sound' }).click();
    await page.locator('#tone-result', { hasText: 'Did you hear two short tones?' }).waitFor({ timeout: 5000 });
    await p.record(page, 'check');

    // Small: what the page downloaded, gzipped; the JavaScript far under 150 KB.
    const bytes = p.downloaded(page);
    const total = Object.values(bytes).reduce((n, k) => n + k.gzip, 0);
    console.log(`patient page downloads (gzip -9): ${Object.entries(bytes).map(([k, v]) => `${k} ${v.gzip} B (${v.bytes} B as served: ${v.files.join(', ')})`).join('; ')}; total ${total} B`);
    assert.deepEqual(Object.keys(bytes).sort(), ['document', 'script', 'stylesheet'], 'only HTML, JavaScript and CSS: no fonts, images or frameworks');
    assert.ok(bytes.script.gzip < 150_000, `JavaScript ${bytes.script.gzip} B gzipped`);
    assert.ok(page.assets.every((a) => a.status === 200 && new URL(a.url).origin === pf.origin), 'every file from the platform itself');

    // By keyboard: Tab reaches Continue with a visible focus ring; Enter presses it.
    await page.getByRole('button', { name: 'Play a test sound' }).focus();
    await page.keyboard.press('Tab');
    assert.deepEqual(
      await page.evaluate(() => {
        const el = document.activeElement;
        const cs = getComputedStyle(el);
        return { text: el.textContent, focusVisible: el.matches(':focus-visible'), outline: `${cs.outlineStyle} ${cs.outlineWidth}` };
      }),
      { text: 'Continue', focusVisible: true, outline: 'solid 3px' },
    );
    await page.keyboard.press('Enter');
    await p.waitPatient(page, (s) => s.screen === 'details', 'the name form');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'details-h', 'the new screen\'s heading has focus');

    // The name form, first sent empty: a clear error on the field.
    await p.record(page, 'details');
    await page.getByRole('button', { name: 'Join the waiting room' }).click();
    await page.locator('#name-error').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#name-error').innerText(), 'Enter your full name.');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'name', 'the field with the error has focus');
    assert.equal(await page.getByLabel('Your full name', { exact: true }).getAttribute('aria-invalid'), 'true');
    await p.record(page, 'details-error');

    await page.getByLabel('Your full name', { exact: true }).fill('Pat Example');
    await page.getByLabel(/Anything the clinic should know/).fill('Date of birth 1 April 1970');
    await page.getByLabel('Your full name', { exact: true }).press('Enter'); // submits the form
    const waiting = await p.waitPatient(page, (s) => s.screen === 'waiting' && s.socket === 'open' && s.visit, 'in the waiting room');
    assert.match(await page.locator('main').innerText(), /The clinic knows you are here/);
    assert.match(await page.locator('#waited').innerText(), /less than a minute/);

    // Reception sees the arrival and sends a message; the page shows and announces it.
    const seen = await room(pf);
    const visit = seen.visits.find((v) => v.id === waiting.visit);
    assert.ok(visit, 'reception sees the patient');
    assert.equal(visit.name, 'Pat Example');
    assert.equal(visit.details, 'Date of birth 1 April 1970');
    const text = 'Thank you for waiting. Dr Jones will see you in about 5 minutes.';
    await pf.api.alice.post('/api/commands', { type: 'send_message', clinic: CLINIC, visit: waiting.visit, text });
    const messaged = await p.waitPatient(page, (s) => s.messages.includes(text), 'the message is shown');
    assert.ok(messaged.announced.includes(`Message from the clinic: ${text}`), 'the message is announced');
    assert.match(await page.locator('#messages').innerText(), /about 5 minutes/);
    await p.record(page, 'waiting');

    // The clinician calls the next patient: the page connects with no click.
    const admittedAt = performance.now();
    await pf.api['dr.jones'].post('/api/commands', { type: 'admit_next', clinic: CLINIC });
    const inCall = await p.waitPatient(page, (s) => s.screen === 'call', 'the call screen');
    assert.ok(inCall.announced.some((a) => /clinician is joining/.test(a)), `"the clinician is joining" is announced: ${inCall.announced}`);
    const [mine, theirs] = await Promise.all([
      p.waitPatientStats(page, h.receiving, 'the patient receives the clinician'),
      h.waitFor(clinician, h.receiving, 'the clinician receives the patient'),
    ]);
    console.log(`admit -> patient decoding ${Math.round(performance.now() - admittedAt)} ms (${JSON.stringify(mine.inboundVideo)})`);
    assert.equal(mine.remoteStreams, 1);
    // Its own send figures may lag the other side's first decoded frame a little.
    await p.waitPatientStats(page, (x) => x.outboundVideo.packetsSent > 0 && x.outboundAudio.packetsSent > 0, 'the patient sends video and audio', 10_000);
    assert.ok(theirs.value.inboundVideo.framesDecoded > 0);
    const call = await p.waitPatient(page, (s) => s.remoteVideos === 1 && s.quality === 'good', 'the call shows the clinician with a good connection', 15_000);
    assert.ok(call.announced.some((a) => /clinician has joined/.test(a)));
    assert.match(await page.locator('#quality-text').innerText(), /Connection: good/);
    // Let the video element paint a frame before the screenshot.
    await page.waitForFunction(() => document.querySelector('#remote video')?.videoWidth > 0, null, { timeout: 10_000 });
    await p.record(page, 'call');

    // Mute and camera off are toggle buttons that stop what the clinic gets: the
    // microphone sends silence, the camera is stopped (its light goes off) and nothing is
    // sent in its place; the page says so in plain words, not only to screen readers.
    await page.getByRole('button', { name: 'Mute' }).click();
    await page.getByRole('button', { name: 'Camera off' }).click();
    assert.equal(await page.getByRole('button', { name: 'Mute' }).getAttribute('aria-pressed'), 'true');
    assert.equal(await page.getByRole('button', { name: 'Camera off' }).getAttribute('aria-pressed'), 'true');
    const off = await p.waitPatient(page, (s) => s.local.cameraOff && s.local.muted && s.selfView === 'off', 'muted, camera off');
    assert.deepEqual(off.sent, { audio: false, video: false, screen: false }, 'what the page tells the others');
    await p.waitPatientStats(page, (x) => x.senders.video === null && x.senders.audio?.enabled === false, 'nothing sent for the camera; silence for the microphone', 5000);
    assert.equal(off.local.tracks, 1, 'the camera track is stopped and gone');
    await page.locator('#self-state', { hasText: 'You are muted: the clinic cannot hear you. Your camera is off: the clinic cannot see you.' }).waitFor();
    await page.locator('#self-figure').getByText('Your camera is off').waitFor();
    await page.locator('#self-figure').getByText('You are muted').waitFor();
    await page.getByRole('button', { name: 'Mute' }).click();
    await page.getByRole('button', { name: 'Camera off' }).click();
    assert.equal(await page.getByRole('button', { name: 'Mute' }).getAttribute('aria-pressed'), 'false');
    const on = await p.waitPatient(page, (s) => !s.local.cameraOff && s.local.tracks === 2 && s.selfView === 'camera', 'microphone and camera on again');
    assert.deepEqual(on.sent, { audio: true, video: true, screen: false });
    assert.ok(await page.locator('#self-state').isHidden(), 'nothing to say about the own devices');

    // The clinician ends the consultation: the page says so and how to rejoin.
    const { consultations } = await room(pf);
    assert.equal(consultations.length, 1);
    await pf.api['dr.jones'].post('/api/commands', { type: 'end_consultation', clinic: CLINIC, consultation: consultations[0].id });
    const ended = await p.waitPatient(page, (s) => s.screen === 'ended' && s.media === 'idle' && s.remoteVideos === 0, 'the ended screen');
    assert.equal(ended.ended, 'consultation_ended');
    assert.match(await page.locator('main').innerText(), /Your appointment has ended[\s\S]*Did it end by accident\?[\s\S]*Open the link/);
    assert.ok(
      await page.evaluate(() => window.consultPatient.messages().some((m) => m.type === 'media_ended' && m.reason === 'consultation_ended')),
      'media_ended {reason: consultation_ended} was received',
    );
    assert.equal((await page.evaluate(() => window.consultPatient.stats())).publisher, null, 'the peer connections are closed');
    // The camera and microphone are released, and the credential forgotten.
    assert.deepEqual(await page.evaluate(() => ({
      session: sessionStorage.getItem('consult.patient.visit'),
      local: localStorage.getItem('consult.patient.visits'),
    })), { session: null, local: null });
    await p.record(page, 'ended');

    // "Join the waiting room again" starts over at the check; nothing of the patient is
    // left on the device (it may be shared) for the next person to see.
    await page.getByRole('button', { name: 'Join the waiting room again' }).click();
    await p.waitPatient(page, (s) => s.screen === 'check', 'back at the check');
    const left = await page.evaluate(() => JSON.stringify({ ...sessionStorage }) + JSON.stringify({ ...localStorage }) + document.body.innerText);
    for (const s of ['Pat Example', 'Date of birth', text, waiting.visit]) assert.ok(!left.includes(s), `${s} is left on the page or the device`);
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors in the pages');
  });
});

test('a reload while waiting keeps the visit and its place, then the patient is admitted', async () => {
  await p.withPatientEnv('patient reload', async (env) => {
    const pf = await p.platform(env, { clinics: [{ id: CLINIC, name: CLINIC_NAME }], staff: STAFF });
    const context = await browser.newContext();
    env.contexts.push(context);
    let page = await p.openPatient(browser, env, pf.origin, `/c/${CLINIC}`, 'patient', { context });
    const { waiting: before } = await p.enterWaitingRoom(page, 'Robin Reload', 'patient');
    const text = 'We can see you in the waiting room.';
    await pf.api.alice.post('/api/commands', { type: 'send_message', clinic: CLINIC, visit: before.visit, text });
    await p.waitPatient(page, (s) => s.messages.includes(text), 'the message is shown');

    // A second patient arrives later (by the API).
    await new Promise((r) => setTimeout(r, 20));
    const later = await pf.anon.post('/api/visits', { entry: { kind: 'open_link', clinic: CLINIC }, name: 'Second Patient' });

    // Reload: back in the waiting room with no typing, same visit, same place, the message kept.
    await page.reload();
    const reloaded = await p.waitPatient(
      page,
      (s) => s.screen === 'waiting' && s.socket === 'open' && s.patient === 'waiting' && s.messages.length > 0,
      'waiting again after the reload, with the message',
    );
    assert.equal(reloaded.visit, before.visit, 'the same visit');
    // A reload asks for nothing by itself: the waiting room offers the button.
    assert.equal(reloaded.local, null, 'no camera or microphone asked for on load');
    await page.getByRole('button', { name: 'Turn on camera and microphone' }).waitFor();
    assert.equal(reloaded.waitingSince, before.waitingSince, 'the same waiting_since');
    assert.deepEqual(reloaded.messages, [text], 'the message is shown again');
    const stored = await page.evaluate(() => JSON.parse(sessionStorage.getItem('consult.patient.visit')).token);
    assert.ok(stored && !page.url().includes(stored), 'the credential is kept, and not in the address');
    let order = (await room(pf)).visits.filter((v) => v.status.state === 'waiting').sort((a, b) => a.arrived_at - b.arrived_at);
    assert.deepEqual(order.map((v) => v.id), [before.visit, later.visit], 'still ahead of the later patient');

    // The clinic's link opened again in a new tab (the first closed): the device may be
    // shared, so it asks for the name given before returning to that place.
    await page.close();
    page = await p.openPatient(browser, env, pf.origin, `/c/${CLINIC}`, 'patient (reopened)', { context });
    await p.waitPatient(page, (s) => s.screen === 'resume', 'the "already in the waiting room" question');
    assert.ok(!(await page.locator('main').innerText()).includes('Robin'), 'the question does not show the name');
    assert.ok(!(await page.evaluate(() => localStorage.getItem('consult.patient.visits'))).includes('Robin'), 'the name is not stored');
    await p.record(page, 'resume');
    await page.getByLabel('Your full name, as you gave it').fill('Someone Else');
    await page.getByRole('button', { name: 'Go back to my place' }).click();
    await page.locator('#resume-error').waitFor({ state: 'visible' });
    assert.match(await page.locator('#resume-error').innerText(), /not the name given on this device/);
    assert.equal((await page.evaluate(() => window.consultPatient.state())).socket, 'closed', 'no connection for a wrong name');
    await p.record(page, 'resume-error');
    await page.getByLabel('Your full name, as you gave it').fill('  robin   RELOAD ');
    await page.getByRole('button', { name: 'Go back to my place' }).click();
    const resumed = await p.waitPatient(page, (s) => s.screen === 'waiting' && s.socket === 'open' && s.patient === 'waiting', 'waiting again after reopening');
    assert.equal(resumed.visit, before.visit);
    assert.equal(resumed.waitingSince, before.waitingSince);
    order = (await room(pf)).visits.filter((v) => v.status.state === 'waiting').sort((a, b) => a.arrived_at - b.arrived_at);
    assert.deepEqual(order.map((v) => v.id), [before.visit, later.visit]);

    // Calling the next patient admits this one (first in the queue), who connects with no
    // click and is told the clinician is joining until the clinician's page joins too.
    await pf.api['dr.jones'].post('/api/commands', { type: 'admit_next', clinic: CLINIC });
    const joining = await p.waitPatient(page, (s) => s.screen === 'call' && s.media === 'connected', 'connected, waiting for the clinician');
    assert.equal(joining.callStatus, 'The clinician is joining…');
    // Reopened, the page has not asked for the camera and microphone: the call says so
    // and offers the button; pressed, they are sent with no new join.
    assert.equal(joining.local, null);
    assert.match(joining.selfState, /not on, so the clinic cannot see or hear you/);
    await p.record(page, 'call-devices-off');
    await page.locator('#call-devices').getByRole('button', { name: 'Turn on camera and microphone' }).click();
    await p.waitPatientStats(page, (x) => x.senders.audio?.readyState === 'live' && x.senders.video?.readyState === 'live', 'camera and microphone sent in the running call', 10_000);
    const joinedOnce = await page.evaluate(() => window.consultPatient.messages().filter((m) => m.type === 'join_media').length);
    assert.equal(joinedOnce, 1, 'turned on without joining again');
    await p.record(page, 'call-joining');
    const clinician = await clinicianPage(env, pf);
    await p.waitPatientStats(page, h.receiving, 'the reloaded patient receives the clinician');
    await h.waitFor(clinician, h.receiving, 'the clinician receives the reloaded patient');
    const after = (await room(pf)).visits;
    assert.equal(after.find((v) => v.id === before.visit).status.state, 'in_consultation');
    assert.equal(after.find((v) => v.id === later.visit).status.state, 'waiting');
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors in the pages');
  });
});

test("a second patient's page never shows or receives the first patient's name", async () => {
  await p.withPatientEnv('patient privacy', async (env) => {
    const pf = await p.platform(env, { clinics: [{ id: CLINIC, name: CLINIC_NAME }], staff: STAFF });
    const FIRST = 'Zebedee Quartermaine';
    const FIRST_DETAILS = 'Hospital number ZQ-778812';
    const first = await p.openPatient(browser, env, pf.origin, `/c/${CLINIC}`, 'first patient');
    const second = await p.openPatient(browser, env, pf.origin, `/c/${CLINIC}`, 'second patient');
    const { waiting: one } = await p.enterWaitingRoom(first, FIRST, 'first patient', FIRST_DETAILS);
    const { waiting: two } = await p.enterWaitingRoom(second, 'Olive Second', 'second patient');
    const toFirst = 'Zebedee, please have your medication list ready.';
    await pf.api.alice.post('/api/commands', { type: 'send_message', clinic: CLINIC, visit: one.visit, text: toFirst });
    await pf.api.alice.post('/api/commands', { type: 'send_message', clinic: CLINIC, visit: two.visit, text: 'Hello Olive.' });
    await p.waitPatient(first, (s) => s.messages.includes(toFirst), 'the first patient gets their message');
    await p.waitPatient(second, (s) => s.messages.includes('Hello Olive.'), 'the second patient gets theirs');

    // The first patient is admitted, is in a call, and the call ends; the second waits on.
    await clinicianPage(env, pf);
    await pf.api['dr.jones'].post('/api/commands', { type: 'admit_next', clinic: CLINIC });
    await p.waitPatientStats(first, h.receiving, 'the first patient is in the call');
    const { consultations } = await room(pf);
    await pf.api['dr.jones'].post('/api/commands', { type: 'end_consultation', clinic: CLINIC, consultation: consultations[0].id });
    await p.waitPatient(first, (s) => s.screen === 'ended', 'the first patient has ended');
    await second.reload(); // a reconnection's snapshot must not carry anyone else either
    const state = await p.waitPatient(
      second,
      (s) => s.screen === 'waiting' && s.socket === 'open' && s.patient === 'waiting' && s.messages.length > 0,
      'the second patient still waits, with their message',
    );
    assert.deepEqual(state.messages, ['Hello Olive.']);

    const secrets = [FIRST, 'Zebedee', 'Quartermaine', FIRST_DETAILS, 'ZQ-778812', toFirst, one.visit];
    const text = await second.evaluate(() => document.documentElement.innerText + document.documentElement.outerHTML);
    const storage = await second.evaluate(() => JSON.stringify({ ...sessionStorage }) + JSON.stringify({ ...localStorage }));
    const frames = second.wsFrames.join('\n');
    const bodies = second.apiBodies.join('\n');
    assert.ok(second.wsFrames.length > 3, `the second page's websocket frames were recorded (${second.wsFrames.length})`);
    for (const s of secrets) {
      assert.ok(!text.includes(s), `the second page shows ${s}`);
      assert.ok(!frames.includes(s), `the second page's websocket received ${s}`);
      assert.ok(!bodies.includes(s), `the second page's API answers contain ${s}`);
      assert.ok(!storage.includes(s), `the second page's storage holds ${s}`);
    }
    // ... and the first page, for its part, never received the second's.
    const firstFrames = first.wsFrames.join('\n');
    for (const s of ['Olive', 'Hello Olive.', two.visit]) assert.ok(!firstFrames.includes(s), `the first page received ${s}`);
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors in the pages');
  });
});
