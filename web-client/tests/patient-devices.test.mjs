// Issue 4, the patient's side: camera, microphone and network problems in the pre-call
// check, each said in plain English with what to do next, and each passing axe-core
// (WCAG 2.0-2.2 A/AA): the camera blocked, camera and microphone blocked (a Chromium
// that does not accept prompts by itself), no microphone, and a network that lets no
// media through. Screenshots of each at 1280 and 375 px in docs/screenshots/.
//
//   cd web-client && node --test tests/patient-devices.test.mjs

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import * as h from './harness.mjs';
import * as p from './patient-helpers.mjs';

h.watchdog(90);

const CLINICS = [{ id: 'dermatology', name: 'Dermatology follow-up' }];
const STAFF = { alice: { name: 'Alice Reception', role: 'reception', clinics: ['dermatology'] } };

let browser;
let prompting; // a Chromium that does not accept camera and microphone prompts by itself
before(async () => {
  [browser, prompting] = await Promise.all([h.launchBrowser(), p.launchPromptingBrowser()]);
});
after(async () => {
  await Promise.all([browser?.close(), prompting?.close()]);
  console.log(`axe-core: ${p.axeResults.map((r) => `${r.state} ${r.violations} violations`).join('; ')}`);
});

test('camera blocked, camera and microphone blocked, no microphone, network blocking media', async () => {
  await p.withPatientEnv('patient device errors', async (env) => {
    const pf = await p.platform(env, { clinics: CLINICS, staff: STAFF });

    // A network that lets nothing through to the media server: the SFU's answer is
    // rewritten to point at a port where nothing listens.
    const blocked = await browser.newContext();
    env.contexts.push(blocked);
    await blocked.route('**/api/media-check', async (route) => {
      if (route.request().method() !== 'POST') return route.continue();
      const res = await route.fetch();
      const body = await res.json();
      body.sdp = body.sdp.replace(/^(a=candidate:\S+ \d+ \S+ \d+ \S+ )\d+/gm, '$19');
      return route.fulfill({ response: res, json: body });
    });
    const netPage = await p.openPatient(browser, env, pf.origin, '/c/dermatology', 'network blocked', { context: blocked });
    await p.startCheck(netPage);
    const t0 = Date.now(); // its check runs (and times out) while the others go on

    // The camera blocked (the microphone allowed): said plainly; the check still runs.
    let page = await p.openPatient(prompting, env, pf.origin, '/c/dermatology', 'camera blocked', { contextOptions: { permissions: ['microphone'] } });
    await p.startCheck(page);
    let s = await p.waitPatient(page, (x) => x.check.camera !== 'pending' && x.check.network === 'ok', 'the check with the camera blocked', 20_000);
    assert.equal(s.check.camera, 'blocked');
    assert.equal(s.check.microphone, 'ok');
    let alert = await page.getByRole('alert').innerText();
    assert.match(alert, /There is a problem:\s*Your browser is blocking the camera\. To allow it, select the camera or padlock symbol next to the web address and choose Allow\. Then press Check again\./);
    assert.match(await page.locator('#check-continue-note').innerText(), /You can still continue/);
    await p.record(page, 'check-camera-blocked');
    // Continuing is still possible: sound only.
    const { waiting } = await p.enterWaitingRoom(page, 'Sam Soundonly', 'camera blocked', undefined, (x) => x.check.network === 'ok');
    assert.equal(waiting.local.tracks, 1);
    assert.match(await page.locator('#waiting-media-warning').innerText(), /blocking the camera\. [\s\S]* Then reload this page: you keep your place\./);
    await p.record(page, 'waiting-camera-blocked');

    // Both blocked: the check of the network still runs (with a silent track).
    page = await p.openPatient(prompting, env, pf.origin, '/c/dermatology', 'both blocked', { contextOptions: { permissions: [] } });
    await p.startCheck(page);
    s = await p.waitPatient(page, (x) => x.check.microphone !== 'pending' && x.check.network === 'ok', 'the check with both blocked', 20_000);
    assert.deepEqual([s.check.camera, s.check.microphone], ['blocked', 'blocked']);
    alert = await page.getByRole('alert').innerText();
    assert.match(alert, /Your browser is blocking the camera and microphone\. To allow them, [\s\S]* Then press Check again\./);
    await p.record(page, 'check-blocked');

    // No microphone at all (the browser finds none).
    const noMic = await browser.newContext();
    env.contexts.push(noMic);
    await noMic.addInitScript(() => {
      const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
      navigator.mediaDevices.getUserMedia = (c) =>
        c?.audio ? Promise.reject(new DOMException('Requested device not found', 'NotFoundError')) : real(c);
    });
    page = await p.openPatient(browser, env, pf.origin, '/c/dermatology', 'no microphone', { context: noMic });
    await p.startCheck(page);
    s = await p.waitPatient(page, (x) => x.check.microphone !== 'pending' && x.check.network === 'ok', 'the check without a microphone', 20_000);
    assert.deepEqual([s.check.camera, s.check.microphone], ['ok', 'missing']);
    assert.match(await page.getByRole('alert').innerText(), /We could not find a microphone\. Plug in a headset[\s\S]*Then press Check again\./);
    await p.record(page, 'check-no-microphone');

    page = netPage;
    s = await p.waitPatient(page, (x) => x.check.network === 'failed', 'the check fails on a blocked network', 25_000);
    console.log(`blocked network: the check failed after ${Date.now() - t0} ms`);
    alert = await page.getByRole('alert').innerText();
    assert.match(alert, /Your network seems to block video calls\. Try another network[\s\S]*Then press Check again\./);
    assert.match(await page.locator('#net-result').innerText(), /Blocked: video cannot get through your network/);
    await p.record(page, 'check-network-blocked');
    // The network is fixed; Check again says so, and the problem is gone.
    await blocked.unroute('**/api/media-check');
    await page.getByRole('button', { name: 'Check again' }).click();
    await p.waitPatient(page, p.checkPassed, 'the check passes once the network lets media through', 20_000);
    assert.ok(await page.locator('#check-problems').isHidden(), 'no problem is shown any more');
    assert.deepEqual(env.pageErrors, [], 'no JavaScript errors in the pages');
  });
});

test('the connection-quality indicator reads loss, frames and the upload estimate', async () => {
  await p.withPatientEnv('patient quality indicator', async (env) => {
    const pf = await p.platform(env, { clinics: CLINICS, staff: STAFF });
    const page = await p.openPatient(browser, env, pf.origin, '/c/dermatology', 'quality');
    // The page's own QualityMonitor, fed made-up stats: per 50 ms, `got` packets arrive,
    // `lost` are lost and `frames` are decoded; `kbps` is the upload estimate.
    const levels = await page.evaluate(async () => {
      const { QualityMonitor } = await import('/js/quality.js');
      const run = async ({ got, lost, frames, kbps = 2000, state = 'connected', remote = 1 }) => {
        let n = 0;
        const media = {
          async stats() {
            n += 1;
            return {
              state,
              remoteStreams: remote,
              inboundVideo: { tracks: 1, packetsReceived: n * got, packetsLost: n * lost, framesDecoded: n * frames },
              inboundAudio: { tracks: 1, packetsReceived: 0, packetsLost: 0 },
              availableOutgoingBitrate: kbps * 1000,
            };
          },
        };
        const seen = [];
        const q = new QualityMonitor(media, (level) => seen.push(level), { intervalMs: 50 });
        q.start();
        await new Promise((r) => setTimeout(r, 300));
        const level = q.level;
        q.stop();
        return level;
      };
      return {
        clean: await run({ got: 100, lost: 0, frames: 2 }),
        someLoss: await run({ got: 95, lost: 5, frames: 2 }),
        heavyLoss: await run({ got: 80, lost: 20, frames: 2 }),
        frozen: await run({ got: 0, lost: 0, frames: 0 }),
        slowUpload: await run({ got: 100, lost: 0, frames: 2, kbps: 120 }),
        noUpload: await run({ got: 100, lost: 0, frames: 2, kbps: 60 }),
      };
    });
    // 2 frames per 50 ms is 40 frames a second: smooth.
    assert.deepEqual(levels, { clean: 'good', someLoss: 'fair', heavyLoss: 'poor', frozen: 'poor', slowUpload: 'fair', noUpload: 'poor' });

    // The SFU's figures for the page's downlink: under the video floor for longer than
    // weakForMs, the link is too weak for video (the page offers sound only); back above,
    // it is not; nobody sending video, or this page in sound only, is never "too weak".
    const weak = await page.evaluate(async () => {
      const { QualityMonitor, callFigures } = await import('/js/quality.js');
      const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
      const run = async (downKbps, expectsVideo, ms) => {
        const link = { downKbps, rttMs: 80, lossPct: 5, at: performance.now() };
        const media = {
          get link() {
            return { ...link, at: performance.now() };
          },
          async stats() {
            return {
              state: 'connected',
              remoteStreams: 1,
              inboundVideo: { tracks: 1, packetsReceived: 0, packetsLost: 0, framesDecoded: 0 },
              inboundAudio: { tracks: 1, packetsReceived: 0, packetsLost: 0 },
              availableOutgoingBitrate: 2_000_000,
            };
          },
        };
        const events = [];
        const q = new QualityMonitor(media, () => {}, { intervalMs: 50, weakForMs: 200, expectsVideo: () => expectsVideo, onVideoWeak: (w) => events.push(w) });
        q.start();
        await sleep(ms);
        const out = { weak: q.videoTooWeak, events: [...events], downKbps: q.figures.downKbps };
        link.downKbps = 600;
        await sleep(150);
        out.after = q.videoTooWeak;
        q.stop();
        return out;
      };
      const figures = callFigures(
        {
          sessionMs: 100_000,
          roundTripMs: 42,
          inboundVideo: { packetsReceived: 9_000, packetsLost: 90, bytesReceived: 6_250_000, freezeCount: 3, totalFreezesDuration: 1.25 },
          inboundAudio: { packetsReceived: 1_000, packetsLost: 10, bytesReceived: 500_000, concealedSamples: 4_800, totalSamplesReceived: 4_800_000 },
          outboundVideo: { bytesSent: 5_000_000 },
          outboundAudio: { bytesSent: 500_000 },
        },
        { path: 'turn_tls', audioOnlyMs: 1500.4 },
      );
      return {
        weak: await run(60, true, 400),
        brief: await run(60, true, 100),
        noVideoExpected: await run(60, false, 400),
        figures,
      };
    });
    assert.deepEqual(weak.weak, { weak: true, events: [true], downKbps: 60, after: false });
    assert.equal(weak.brief.weak, false, 'under the floor for less than weakForMs');
    assert.deepEqual(weak.noVideoExpected.events, [], 'no video expected, nothing is too weak');
    assert.deepEqual(weak.figures, {
      seconds: 100, rtt_ms: 42, loss_permille: 10, recv_kbps: 540, send_kbps: 440, freezes: 3, freeze_ms: 1250,
      concealed_permille: 1, audio_only_ms: 1500, path: 'turn_tls',
    });
  });
});
