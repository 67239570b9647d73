// Issue 4, the staff side, in headless Chromium: reception's board, the clinician's queue
// and call, administration, and the errors a member of staff can meet. Every page state
// is checked with axe-core (WCAG 2.2 A/AA) and photographed at 1280 and 375 px wide into
// docs/screenshots/. Patients are call.html pages (their own page is tested elsewhere).
//
// Run by scripts/browser-tests (inside a private network namespace), or directly:
//   cd web-client && node --test tests/staff.test.mjs

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import * as h from './harness.mjs';
import * as s from './staff-helpers.mjs';

h.watchdog(200);

let browser;
before(async () => {
  browser = await h.launchBrowser();
});
after(async () => {
  await browser?.close();
  console.log(`axe-core: no violations in ${s.axeChecked.length} page states: ${s.axeChecked.join(', ')}`);
  console.log(`screenshots (desktop and 375 px): ${s.shots.join(', ')}`);
});

const button = (page, name) => page.getByRole('button', { name, exact: true });
const inDialog = (page, name) => page.locator('#dlg').getByRole('button', { name, exact: true });

test('reception admits a patient to a clinician, who runs the call and ends it', async () => {
  await s.withStaffEnv('reception and clinician', async (env) => {
    const p = await s.platform(env, {
      clinics: [['derm', 'Dermatology']],
      staff: [
        ['rita', 'Rita Reception', 'reception', ['derm']],
        ['dr.jones', 'Dr Jones', 'clinician', ['derm']],
        ['dr.smith', 'Dr Smith', 'clinician', ['derm']],
      ],
    });

    const index = await s.openPage(browser, env, p.url, 'index', '/');
    await s.check(index, 'staff-index');
    await index.getByRole('link', { name: 'Staff sign-in' }).click();
    await index.waitForURL(/\/staff$/);
    await index.context().close();

    // Reception signs in through the form.
    const rec = await s.openPage(browser, env, p.url, 'reception');
    await s.waitStaff(rec, (x) => x.view === 'sign-in', 'sign-in form shown');
    await s.check(rec, 'staff-sign-in');
    await s.signIn(rec, 'rita', p.passwords.rita);
    await s.waitStaff(rec, (x) => x.socket === 'open' && x.role === 'reception' && x.clinics.length === 1, 'reception board');
    await rec.getByRole('heading', { name: 'Dermatology' }).waitFor();

    // The clinician signs in through the form in another browser.
    const doc = await s.openPage(browser, env, p.url, 'clinician');
    await s.signIn(doc, 'dr.jones', p.passwords['dr.jones']);
    await s.waitStaff(doc, (x) => x.socket === 'open' && x.role === 'clinician' && x.clinics.length === 1, 'clinician board');

    // A patient arrives: reception sees, hears and is told.
    const entered = await s.enter(p.url, 'derm', 'Pat Example');
    const patient = await h.openCall(browser, env, p.url, entered.visit_token, 'patient');
    await h.waitForState(patient, (x) => x.patient === 'waiting', 'patient waiting');
    const arrival = await s.waitStaff(
      rec,
      (x) => /New arrival in Dermatology: Pat Example/.test(x.arrival) && s.clinic(x, 'derm').waiting.some((v) => v.name === 'Pat Example'),
      'reception sees the arrival',
    );
    // The patient's page is connected, and the board says so.
    await s.waitStaff(rec, (x) => s.clinic(x, 'derm').waiting[0]?.online === true, 'reception sees the patient online');
    assert.ok(arrival.value.chimes >= 1, 'the arrival alert sounded');
    assert.equal(await rec.locator('#arrival').getAttribute('role'), 'status', 'the alert is a live region');
    const card = rec.locator('li.visit', { hasText: 'Pat Example' });
    await card.getByText('Waiting', { exact: true }).waitFor();
    await card.getByText('Connected', { exact: true }).waitFor();
    await card.getByText(/Waited less than a minute/).waitFor();
    await s.check(rec, 'staff-reception-board');

    await s.waitStaff(doc, (x) => s.clinic(x, 'derm').waiting.length === 1, 'clinician sees the queue');
    await s.check(doc, 'staff-clinician-queue');

    // Reception messages the patient, who sees it.
    await button(rec, 'Message… Pat Example').click();
    await rec.getByLabel('Message', { exact: true }).fill('The clinician is running 5 minutes late.');
    await s.check(rec, 'staff-reception-message');
    await inDialog(rec, 'Send message').click();
    await s.waitStaff(rec, (x) => x.feedback === 'Message sent to Pat Example.', 'message sent');
    await h.waitForState(patient, (x) => x.status.includes('The clinician is running 5 minutes late.'), 'patient sees the message');
    assert.equal(await button(rec, 'Message… Pat Example').evaluate((b) => b === document.activeElement), true, 'focus returns to the button');

    // Reception admits the patient to the clinician chosen in the dialog.
    await button(rec, 'Admit… Pat Example').click();
    const choice = rec.getByLabel('Clinician', { exact: true });
    await choice.waitFor();
    assert.deepEqual(await choice.locator('option').allTextContents(), ['Dr Jones', 'Dr Smith']);
    await choice.selectOption('dr.jones');
    await s.check(rec, 'staff-reception-admit');
    const admittedAt = performance.now();
    await inDialog(rec, 'Admit').click();
    await s.waitStaff(rec, (x) => x.feedback === 'Pat Example admitted to Dr Jones.', 'reception told');

    // The clinician's page joins the call by itself, receiving; their camera and
    // microphone start with their press (never by themselves); then both decode video and
    // get audio.
    await s.waitStaff(doc, (x) => x.consultation && x.media !== 'idle' && !x.devices.started, 'the call joined, devices not asked for');
    await doc.getByRole('heading', { name: 'Your call in Dermatology' }).waitFor();
    await s.check(doc, 'staff-clinician-devices-off');
    await button(doc, 'Turn on camera and microphone').click();
    const [c, pt] = await Promise.all([
      h.waitFor(doc, h.receiving, 'clinician receives the patient', 30_000, h.staffStats),
      h.waitFor(patient, h.receiving, 'patient receives the clinician', 30_000),
    ]);
    console.log(`admit (reception's click) -> decoding: clinician ${Math.round(c.at - admittedAt)} ms, patient ${Math.round(pt.at - admittedAt)} ms`);
    await doc.getByRole('heading', { name: 'Your call in Dermatology' }).waitFor();
    await s.waitStaff(rec, (x) => s.clinic(x, 'derm').inConsultation.length === 1, 'reception sees the consultation');
    await rec.locator('li.visit', { hasText: 'Pat Example' }).getByText('In consultation with Dr Jones').waitFor();
    await s.check(rec, 'staff-reception-in-call');

    // In the call: mute, camera off, screen share (the patient's video becomes the screen).
    await button(doc, 'Mute').click();
    await button(doc, 'Camera off').click();
    await s.waitStaff(doc, (x) => x.muted && x.cameraOff, 'muted, camera off');
    assert.equal(await button(doc, 'Mute').getAttribute('aria-pressed'), 'true');
    await button(doc, 'Mute').click();
    await button(doc, 'Camera off').click();
    await s.waitStaff(doc, (x) => !x.muted && !x.cameraOff && x.selfView === 'camera', 'microphone and camera on again');
    await s.check(doc, 'staff-clinician-call');
    const patientVideoWidth = () => document.querySelector('#remote video')?.videoWidth ?? 0;
    const camWidth = (await h.waitFor(patient, (w) => w > 0, 'patient video size', 10_000, patientVideoWidth)).value;
    await button(doc, 'Share screen').click();
    await s.waitStaff(doc, (x) => x.sharing, 'sharing the screen');
    const screenWidth = (await h.waitFor(patient, (w) => w > 0 && w !== camWidth, 'patient sees the screen', 15_000, patientVideoWidth)).value;
    console.log(`screen share: the patient's video went from ${camWidth} to ${screenWidth} px wide without renegotiation`);
    await s.check(doc, 'staff-clinician-sharing');
    await button(doc, 'Share screen').click();
    // The camera again (its width may have been lowered meanwhile by the encoder's own
    // adaptation on a busy machine, so: not the screen's).
    await h.waitFor(patient, (w) => w > 0 && w !== screenWidth, 'patient sees the camera again', 15_000, patientVideoWidth);
    const afterShare = await doc.evaluate(() => window.consultStaff.messages());
    assert.equal(afterShare.filter((m) => m.type === 'join_media').length, 1, 'the share did not rejoin the media');

    // The clinician ends the call through the page; both see that it ended.
    await button(doc, 'End call').click();
    await s.check(doc, 'staff-clinician-end-confirm');
    await inDialog(doc, 'End call').click();
    // The media session is over either way: left by the page when the board no longer
    // shows the consultation (idle), or ended by the server's media_ended if that came
    // first (ended, reason consultation_ended). The two arrive in either order.
    await s.waitStaff(doc, (x) => x.callEnded && ['idle', 'ended'].includes(x.media) && x.remoteVideos === 0 && x.consultation === null, 'clinician: call ended');
    await h.waitForState(patient, (x) => x.callEnded && /ended/i.test(x.status), 'patient: call ended');
    await s.waitStaff(rec, (x) => s.clinic(x, 'derm').waiting.length === 0 && s.clinic(x, 'derm').inConsultation.length === 0, 'reception board empty');
    assert.match(await doc.locator('#feedback').textContent(), /ended/);
    const stats = await doc.evaluate(() => window.consultStaff.stats());
    assert.equal(stats.publisher, null, 'the clinician’s peer connections are closed');
    assert.equal(await doc.evaluate(() => document.getElementById('self-view').srcObject), null, 'the camera is released');
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');
  });
});

test('a clinician calls the next patient, adds an invited person, sends back and transfers', async () => {
  await s.withStaffEnv('clinician', async (env) => {
    const p = await s.platform(env, {
      clinics: [['cardio', 'Cardiology'], ['cardio-fu', 'Cardiology follow-up']],
      staff: [['dr.lee', 'Dr Lee', 'clinician', ['cardio', 'cardio-fu']]],
    });
    const doc = await s.openPage(browser, env, p.url, 'clinician');
    await s.signIn(doc, 'dr.lee', p.passwords['dr.lee']);
    await s.waitStaff(doc, (x) => x.socket === 'open' && x.clinics.length === 2, 'clinician board');

    const entered = await s.enter(p.url, 'cardio', 'Sam Patient');
    const patient = await h.openCall(browser, env, p.url, entered.visit_token, 'patient');
    await s.waitStaff(doc, (x) => s.clinic(x, 'cardio').waiting.some((v) => v.name === 'Sam Patient'), 'clinician sees the patient');

    await button(doc, 'Call next patient in Cardiology').click();
    await h.waitFor(doc, h.receiving, 'clinician receives the patient', 30_000, h.staffStats);
    await h.waitFor(patient, h.receiving, 'patient receives the clinician', 30_000);
    assert.equal(await doc.evaluate(() => document.activeElement.id), 'call-h', 'focus moves to the call');

    // Leave the video (the call goes on) and rejoin it.
    await button(doc, 'Leave video').click();
    await s.waitStaff(doc, (x) => x.left && x.media === 'idle' && x.consultation !== null, 'left the video');
    await button(doc, 'Rejoin video').click();
    await h.waitFor(doc, (x) => x.state === 'connected' && h.receiving(x), 'rejoined the video', 30_000, h.staffStats);

    // A new invite link for an interpreter, from the call.
    await button(doc, 'Invite someone').click();
    await doc.getByLabel('Reference (optional)').fill('Interpreter for Sam');
    await inDialog(doc, 'Create link').click();
    const link = await doc.getByRole('textbox', { name: 'Invite link' }).inputValue();
    assert.match(link, /\/i#[\w-]+\.[\w-]+\.[\w-]+$/, 'an invite link is shown, its token in the fragment');
    await s.check(doc, 'staff-clinician-invite');
    await inDialog(doc, 'Done').click();

    // The interpreter arrives by that link and is added to the call from the waiting room.
    const token = link.split('/i#')[1];
    const interp = await h.rest(p.url).post('/api/visits', { entry: { kind: 'invite', token }, name: 'Ines Interpreter' });
    await s.waitStaff(doc, (x) => s.clinic(x, 'cardio').waiting.some((v) => v.name === 'Ines Interpreter'), 'interpreter waiting');
    await doc.locator('li.visit', { hasText: 'Ines Interpreter' }).getByText('Appointment Interpreter for Sam').waitFor();
    await button(doc, 'Add to call Ines Interpreter').click();
    await s.waitStaff(doc, (x) => s.clinic(x, 'cardio').consultations[0]?.visits.length === 2, 'two people in the call');
    await doc.locator('#call-people p.name', { hasText: 'Ines Interpreter' }).waitFor();

    // Send the patient back to waiting: they wait again, the call goes on with the interpreter.
    await button(doc, 'Send back to waiting Sam Patient').click();
    await s.waitStaff(doc, (x) => s.clinic(x, 'cardio').waiting.some((v) => v.name === 'Sam Patient') && x.consultation !== null, 'patient back in the queue');
    await h.waitForState(patient, (x) => x.patient === 'waiting', 'patient page: waiting again');
    await doc.locator('li.visit', { hasText: 'Sam Patient' }).getByText('Waiting', { exact: true }).waitFor();

    // The last person sent back ends the call.
    await button(doc, 'Send back to waiting Ines Interpreter').click();
    await s.waitStaff(doc, (x) => x.consultation === null && x.callEnded && s.clinic(x, 'cardio').waiting.length === 2, 'call over, both waiting');

    // Transfer the patient to the other clinic's waiting room.
    await button(doc, 'Transfer… Sam Patient').click();
    await doc.getByLabel('Transfer to').selectOption('clinic:cardio-fu');
    await s.check(doc, 'staff-clinician-transfer');
    await inDialog(doc, 'Transfer').click();
    await s.waitStaff(doc, (x) => s.clinic(x, 'cardio-fu').waiting.some((v) => v.name === 'Sam Patient'), 'patient transferred');
    await h.waitForState(patient, (x) => x.patient === 'waiting' && /Cardiology follow-up/.test(x.status), 'patient told the new clinic');
    assert.ok(interp.visit);
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');
  });
});

test('a patient admitted to a clinician who is in a call waits until the clinician switches', async () => {
  await s.withStaffEnv('second call', async (env) => {
    const p = await s.platform(env, {
      clinics: [['derm', 'Dermatology']],
      staff: [['rita', 'Rita Reception', 'reception', ['derm']], ['dr.jones', 'Dr Jones', 'clinician', ['derm']]],
    });
    const doc = await s.openPage(browser, env, p.url, 'clinician');
    await s.signIn(doc, 'dr.jones', p.passwords['dr.jones']);
    await s.waitStaff(doc, (x) => x.socket === 'open', 'clinician board');
    const { token } = await h.rest(p.url).post('/api/staff/sign-in', { username: 'rita', password: p.passwords.rita });
    const reception = h.rest(p.url, token);
    const first = await s.enter(p.url, 'derm', 'First Patient');
    const second = await s.enter(p.url, 'derm', 'Second Patient');
    await reception.post('/api/commands', { type: 'admit', clinic: 'derm', visit: first.visit, clinician: 'dr.jones' });
    const one = await s.waitStaff(doc, (x) => x.consultation && x.media !== 'idle', 'the clinician joins the first call by itself');
    await reception.post('/api/commands', { type: 'admit', clinic: 'derm', visit: second.visit, clinician: 'dr.jones' });
    await s.waitStaff(doc, (x) => /Second Patient has been admitted to you/.test(x.feedback), 'told of the second patient');
    assert.equal((await doc.evaluate(() => window.consultStaff.state())).consultation, one.value.consultation, 'still in the first call');
    await button(doc, 'Switch to this call Second Patient').click();
    await s.waitStaff(doc, (x) => x.consultation && x.consultation !== one.value.consultation && x.media !== 'idle', 'switched to the second call');
    await doc.locator('#call-people p.name', { hasText: 'Second Patient' }).waitFor();
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');
  });
});

test('an admin creates a clinic, a member of staff and an invite link; the new member signs in', async () => {
  await s.withStaffEnv('admin', async (env) => {
    const p = await s.platform(env, { staff: [['ada', 'Ada Admin', 'admin', []]] });
    const admin = await s.openPage(browser, env, p.url, 'admin', '/admin');
    await s.waitAdmin(admin, (x) => x.view === 'sign-in-view', 'admin sign-in');
    await s.check(admin, 'admin-sign-in');
    await s.signIn(admin, 'ada', p.passwords.ada);
    await s.waitAdmin(admin, (x) => x.view === 'admin-view' && x.staff.includes('ada') && x.audit > 0, 'admin page');

    await admin.getByRole('textbox', { name: 'Clinic code' }).fill('ent');
    await admin.getByRole('textbox', { name: 'Name shown to patients' }).fill('Ear, nose and throat');
    await button(admin, 'Add clinic').click();
    await s.waitAdmin(admin, (x) => x.clinics.includes('ent') && /saved/.test(x.feedback), 'clinic created');

    const pw = s.password();
    await admin.getByRole('textbox', { name: 'User name' }).fill('sam.r');
    await admin.getByRole('textbox', { name: 'Full name' }).fill('Sam Reception');
    await admin.getByRole('combobox', { name: 'Role' }).selectOption('reception');
    await admin.getByRole('textbox', { name: 'Password', exact: true }).fill(pw);
    await admin.getByRole('checkbox', { name: 'Ear, nose and throat (ent)' }).check();
    await button(admin, 'Add member of staff').click();
    await s.waitAdmin(admin, (x) => x.staff.includes('sam.r') && /can now sign in/.test(x.feedback), 'staff created');

    await admin.getByRole('textbox', { name: 'Appointment reference (optional)' }).fill('APT-7');
    await button(admin, 'Create invite link').click();
    await s.waitAdmin(admin, (x) => x.issued === 1 && /Invite link created/.test(x.feedback), 'invite issued');
    const url = await admin.locator('#issued input').inputValue();
    assert.match(url, /\/i#[\w-]+\.[\w-]+\.[\w-]+$/, 'the token travels in the fragment');
    await admin.locator('#audit-table').getByText('issued an invite link').waitFor();
    await s.check(admin, 'admin-page');

    // A form error, in plain English, on the field.
    await admin.getByRole('textbox', { name: 'Clinic code' }).fill('Bad Code!');
    await button(admin, 'Add clinic').click();
    await admin.locator('#clinic-form').getByText(/Enter a clinic code of small letters/).waitFor();
    assert.equal(await admin.getByRole('textbox', { name: 'Clinic code' }).getAttribute('aria-invalid'), 'true');
    await s.check(admin, 'admin-form-error');

    // The admin's own board: every clinic.
    await admin.getByRole('link', { name: 'Waiting rooms' }).click();
    await s.waitStaff(admin, (x) => x.socket === 'open' && x.role === 'admin' && x.clinics.some((c) => c.id === 'ent'), 'admin board');
    await admin.getByRole('link', { name: 'Administration' }).waitFor();

    // The new member of staff signs in and sees their clinic.
    const sam = await s.openPage(browser, env, p.url, 'new staff');
    await s.signIn(sam, 'sam.r', pw);
    await s.waitStaff(sam, (x) => x.socket === 'open' && x.role === 'reception' && x.clinics[0]?.id === 'ent', 'new member signed in');
    // A sign-in about to expire is refreshed, and the websocket reconnects with the new token.
    await sam.evaluate(() => {
      const x = JSON.parse(sessionStorage.getItem('consult.staff'));
      x.expires_at = Date.now() + 3000;
      sessionStorage.setItem('consult.staff', JSON.stringify(x));
    });
    await sam.reload();
    const refreshed = () => ({
      expires: JSON.parse(sessionStorage.getItem('consult.staff')).expires_at - Date.now(),
      welcomes: window.consultStaff.messages().filter((m) => m.type === 'welcome').length,
      socket: window.consultStaff.state().socket,
    });
    await h.waitFor(sam, (x) => x.expires > 30 * 60_000 && x.welcomes >= 2 && x.socket === 'open', 'token refreshed, reconnected', 15_000, refreshed);
    // ... and is told the admin page is not for them.
    await sam.goto(`${p.url}/admin`);
    await s.waitAdmin(sam, (x) => x.view === 'forbidden-view', 'not for reception');
    await s.check(sam, 'admin-not-allowed');
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');
  });
});

test('errors: wrong password, expired or invalid sign-in, refused action, server unreachable', async () => {
  await s.withStaffEnv('errors', async (env) => {
    const p = await s.platform(env, {
      clinics: [['derm', 'Dermatology']],
      staff: [
        ['rita', 'Rita Reception', 'reception', ['derm']],
        ['dr.jones', 'Dr Jones', 'clinician', ['derm']],
      ],
    });
    const page = await s.openPage(browser, env, p.url, 'reception');
    await s.signIn(page, 'rita', 'not the password');
    await s.waitStaff(page, (x) => /user name or password is not right/.test(x.signInError), 'wrong password explained');
    assert.equal(await page.getByLabel('Password', { exact: true }).evaluate((e) => e === document.activeElement), true, 'focus on the password');
    await s.check(page, 'staff-sign-in-wrong-password');

    // A stored sign-in that has expired, or that the server does not accept.
    const session = { username: 'rita', display_name: 'Rita Reception', role: 'reception', clinics: ['derm'] };
    await page.evaluate((x) => sessionStorage.setItem('consult.staff', JSON.stringify(x)), { token: 'x.y.z', expires_at: Date.now() - 1000, session });
    await page.reload();
    await s.waitStaff(page, (x) => x.view === 'sign-in' && /expired/.test(x.signInNote), 'expired: back to sign-in');
    await s.check(page, 'staff-sign-in-expired');
    await page.evaluate((x) => sessionStorage.setItem('consult.staff', JSON.stringify(x)), { token: 'x.y.z', expires_at: Date.now() + 3_600_000, session });
    await page.reload();
    await s.waitStaff(page, (x) => x.view === 'sign-in' && /no longer valid/.test(x.signInNote), 'invalid: back to sign-in');
    await page.goto(`${p.url}/admin`);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('consult.staff')), null, 'the bad token was dropped');
    await page.evaluate((x) => sessionStorage.setItem('consult.staff', JSON.stringify(x)), { token: 'x.y.z', expires_at: Date.now() + 3_600_000, session });
    await page.reload();
    await s.waitAdmin(page, (x) => x.view === 'sign-in-view' && /no longer valid/.test(x.signInNote), 'admin page: invalid: back to sign-in');
    await page.goto(`${p.url}/staff`);

    // A refused action: someone else admitted the patient while the dialog was open.
    await s.signIn(page, 'rita', p.passwords.rita);
    await s.waitStaff(page, (x) => x.socket === 'open', 'signed in');
    const entered = await s.enter(p.url, 'derm', 'Pat Example');
    await s.waitStaff(page, (x) => s.clinic(x, 'derm').waiting.length === 1, 'patient waiting');
    await button(page, 'Admit… Pat Example').click();
    const { token } = await h.rest(p.url).post('/api/staff/sign-in', { username: 'dr.jones', password: p.passwords['dr.jones'] });
    await h.rest(p.url, token).post('/api/commands', { type: 'admit', clinic: 'derm', visit: entered.visit, clinician: 'dr.jones' });
    await inDialog(page, 'Admit').click();
    await page.locator('#dlg-error').getByText('This patient has already been admitted.').waitFor();
    await s.check(page, 'staff-action-refused');
    await button(page, 'Cancel').click();
    await button(page, 'Remove… Pat Example').click();
    await inDialog(page, 'Remove').click();
    await s.waitStaff(page, (x) => s.clinic(x, 'derm').inConsultation.length === 0 && /was removed/.test(x.feedback), 'patient removed');

    // The server goes away: the board says so and keeps trying; sign-in says so too.
    await p.proc.stop();
    await s.waitStaff(page, (x) => /Reconnecting|Cannot reach the server/.test(x.connection), 'connection lost shown', 20_000);
    await s.check(page, 'staff-reconnecting');
    await button(page, 'Sign out').click();
    await s.waitStaff(page, (x) => x.view === 'sign-in' && /signed out/.test(x.signInNote), 'signed out');
    await s.signIn(page, 'rita', p.passwords.rita);
    await s.waitStaff(page, (x) => /Cannot reach the server/.test(x.signInError), 'unreachable explained');
    await s.check(page, 'staff-sign-in-unreachable');
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors');
  });
});

test('an admin drains a media server from the admin page and puts it back', async () => {
  await s.withStaffEnv('media servers', async (env) => {
    const dir = await env.tmpdir();
    const redis = await h.startRedis(env, dir);
    await h.startSfu(env, { redisUrl: redis.url, nodeId: 'sfu-1' });
    await h.startSfu(env, { redisUrl: redis.url, nodeId: 'sfu-2' });
    const p = await s.platform(env, { staff: [['ada', 'Ada Admin', 'admin', []]], redisUrl: redis.url });
    const admin = await s.openPage(browser, env, p.url, 'admin', '/admin');
    await s.waitAdmin(admin, (x) => x.view === 'sign-in-view', 'admin sign-in');
    await s.signIn(admin, 'ada', p.passwords.ada);
    const inService = (x, id) => x.nodes.find((n) => n.id === id)?.state === 'In service';
    await s.waitAdmin(admin, (x) => x.nodes.length === 2 && inService(x, 'sfu-1') && inService(x, 'sfu-2'), 'both media servers in service');

    await admin.getByRole('combobox', { name: 'Move calls after' }).selectOption('300');
    await button(admin, 'Drain sfu-1').click();
    await s.waitAdmin(
      admin,
      (x) => x.nodes.find((n) => n.id === 'sfu-1')?.state === 'Draining: no new calls' && inService(x, 'sfu-2'),
      'sfu-1 draining, sfu-2 not',
    );
    await admin.locator('#nodes-table').getByText('Draining: no new calls').waitFor();
    await admin.locator('#audit-table').getByText('drained a media server').waitFor();
    await s.check(admin, 'admin-media-servers');
    // The API says the same.
    const records = await h.rest(p.url, (await h.rest(p.url).post('/api/staff/sign-in', { username: 'ada', password: p.passwords.ada })).token)
      .get('/api/admin/media-nodes');
    assert.deepEqual(records.map((r) => [r.id, r.draining]), [['sfu-1', true], ['sfu-2', false]]);

    await button(admin, 'Put sfu-1 back in service').click();
    await s.waitAdmin(admin, (x) => inService(x, 'sfu-1'), 'sfu-1 back in service');
    await admin.locator('#audit-table').getByText('put a media server back in service').waitFor();
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors in the page');
  });
});
