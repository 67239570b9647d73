// Issue 12: every browser's codec. Safari prefers H264 and old Safari offers nothing
// else; Firefox without its OpenH264 plug-in (Debian's firefox-esr here, which cannot
// download it) offers no H264. Safari cannot run here: Chromium pages stand in for it by
// reordering or filtering the codecs of their publisher connection (`setCodecPreferences`,
// as Safari's offers look); the browser without H264 is the real Firefox. The SFU must make
// every subscriber decode every publisher:
//   - an H264-preferring publisher is answered with H264 and decoded by the other side;
//   - an H264-only publisher is decoded, and makes the others send H264 to it;
//   - when someone who cannot decode H264 joins, the H264 publisher is asked to offer
//     again and switches to VP8 without leaving (and back when they leave);
//   - four people with mixed preferences each decode the other three.
//
// Run by scripts/browser-tests (inside a private network namespace), or directly:
//   cd web-client && node --test tests/codecs.test.mjs

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import * as h from './harness.mjs';

h.watchdog(240);

const CLINIC = 'dermatology';
const CLINICIAN = 'dr.jones';
const H264 = 'video/H264';
const VP8 = 'video/VP8';

let browser;
let firefox;
before(async () => {
  [browser, firefox] = await Promise.all([h.launchBrowser('chromium'), h.launchBrowser('firefox')]);
});
after(async () => {
  await Promise.all([browser?.close(), firefox?.close()]);
});

/**
 * An init script: the page's video publisher offers its codecs in `order` first
 * (`only`: nothing else), as a browser with those preferences would.
 */
function codecPreference(order, only) {
  return `(${(order, only) => {
    const add = RTCPeerConnection.prototype.addTransceiver;
    RTCPeerConnection.prototype.addTransceiver = function (what, init) {
      const t = add.call(this, what, init);
      const kind = typeof what === 'string' ? what : what.kind;
      if (kind === 'video' && init?.direction === 'sendonly') {
        const caps = RTCRtpSender.getCapabilities('video').codecs;
        const rank = (c) => (order.includes(c.mimeType) ? order.indexOf(c.mimeType) : order.length);
        const wanted = only ? caps.filter((c) => order.includes(c.mimeType)) : caps;
        t.setCodecPreferences(wanted.slice().sort((a, b) => rank(a) - rank(b)));
      }
      return t;
    };
  }})(${JSON.stringify(order)}, ${only});`;
}
const PREFERS_H264 = codecPreference([H264], false); // Safari
/**
 * An init script: the page's browser refuses a send encoding's `scalabilityMode` (as one
 * that does not support the mode asked for would, with an OperationError).
 */
const REFUSES_SCALABILITY_MODE = `(${() => {
  const add = RTCPeerConnection.prototype.addTransceiver;
  RTCPeerConnection.prototype.addTransceiver = function (what, init) {
    if (init?.sendEncodings?.some((e) => 'scalabilityMode' in e)) {
      throw new DOMException('scalabilityMode not supported', 'OperationError');
    }
    return add.call(this, what, init);
  };
}})();`;
const H264_ONLY = codecPreference([H264], true); // Safari before 12.1

/** A clinic, its clinician signed in on a call page, and a way to admit more people. */
async function platform(env, clinicianScript) {
  const dataDir = await env.tmpdir();
  const store = { dataDir };
  const password = randomBytes(12).toString('hex');
  await h.consultCli(env, store, ['clinic', 'add', CLINIC, '--name', 'Dermatology', '--open-link']);
  await h.consultCli(
    env,
    store,
    ['staff', 'add', CLINICIAN, '--name', 'Dr Jones', '--role', 'clinician', '--clinic', CLINIC, '--password-stdin'],
    `${password}\n`,
  );
  const server = await h.startConsult(env, { ...store, extraEnv: { RUST_LOG: process.env.RUST_LOG || (process.env.DEBUG_SFU ? 'sfu=debug,info' : 'info') } });
  const { token } = await h.rest(server.url).post('/api/staff/sign-in', { username: CLINICIAN, password });
  const staff = h.rest(server.url, token);
  const clinician = await h.openCall(browser, env, server.url, token, 'clinician', { initScript: clinicianScript });
  await h.waitForState(clinician, (s) => s.socket === 'open' && s.role === 'clinician', 'clinician signed in');
  let consultation = null;
  /**
   * A patient page (in Chromium, or in Firefox with `initScript` 'firefox') that enters,
   * waits, and is admitted into the one consultation.
   */
  const patient = async (label, initScript) => {
    const entered = await h.rest(server.url).post('/api/visits', {
      entry: { kind: 'open_link', clinic: CLINIC },
      name: `Pat ${label}`,
    });
    const page =
      initScript === 'firefox'
        ? await h.openCall(firefox, env, server.url, entered.visit_token, label)
        : await h.openCall(browser, env, server.url, entered.visit_token, label, { initScript });
    await h.waitForState(page, (s) => s.patient === 'waiting', `${label} waiting`);
    await staff.post('/api/commands', {
      type: 'admit',
      clinic: CLINIC,
      visit: entered.visit,
      clinician: CLINICIAN,
      ...(consultation ? { consultation } : {}),
    });
    if (!consultation) {
      const room = await staff.get(`/api/clinics/${CLINIC}/room`);
      consultation = room.consultations[0].id;
    }
    return { page, visit: entered.visit };
  };
  const sendBack = (visit) => staff.post('/api/commands', { type: 'return_to_waiting', clinic: CLINIC, visit });
  return { clinician, patient, sendBack };
}

/** Waits until `page` decodes video from `n` others, each in a codec `codecOk` accepts. */
function decodesOthers(page, who, n, codecOk = () => true, timeoutMs = 30_000) {
  return h.waitFor(
    page,
    (s) => {
      const streams = Object.values(s.byStream);
      return (
        streams.length === n &&
        streams.every((x) => x.framesDecoded > 0 && x.audioPacketsReceived > 0 && codecOk(x.videoCodec))
      );
    },
    `${who} decodes video and receives audio from ${n} others`,
    timeoutMs,
  );
}

/** Waits until `page` sends its video in `codec`. */
function sends(page, who, codec, timeoutMs = 20_000) {
  return h.waitFor(page, (s) => s.outboundVideo.codec === codec && s.outboundVideo.framesEncoded > 0, `${who} sends ${codec}`, timeoutMs);
}

/** Decoded frames from each other participant, then the same again after `ms`: all grow. */
async function keepsDecoding(page, who, ms = 1500) {
  const before = (await page.evaluate(() => window.consultCall.stats())).byStream;
  await new Promise((r) => setTimeout(r, ms));
  const now = (await page.evaluate(() => window.consultCall.stats())).byStream;
  for (const [id, s] of Object.entries(before)) {
    assert.ok(now[id]?.framesDecoded > s.framesDecoded, `${who}: video from ${id} stopped (${JSON.stringify(now)})`);
  }
}

test('an H264-preferring publisher (as Safari) is sent in H264 and decoded by the other side', async () => {
  await h.withEnv('prefers H264', async (env) => {
    const p = await platform(env);
    const { page: safari } = await p.patient('safari', PREFERS_H264);
    await sends(safari, 'the H264-preferring patient', H264);
    await decodesOthers(p.clinician, 'the clinician', 1, (c) => c === H264);
    await decodesOthers(safari, 'the patient', 1, (c) => c === VP8);
    await sends(p.clinician, 'the clinician (Chromium prefers VP8)', VP8);
    assert.deepEqual(env.pageErrors, []);
  });
});

test('a browser that refuses the layers\' scalability mode still sends its video in simulcast', async () => {
  await h.withEnv('no scalability mode', async (env) => {
    const p = await platform(env);
    const { page } = await p.patient('refuses-mode', REFUSES_SCALABILITY_MODE);
    await sends(page, 'the patient', VP8);
    await decodesOthers(p.clinician, 'the clinician', 1);
    await decodesOthers(page, 'the patient', 1);
    // Both layers, in the browser's own mode.
    const sent = await page.evaluate(async () => (await window.consultCall.stats()).outboundVideo);
    assert.equal(sent.tracks, 2, `its video streams: ${JSON.stringify(sent)}`);
    assert.deepEqual(env.pageErrors, []);
  });
});

test('an H264-only publisher (as old Safari) is decoded, and the others send it H264', async () => {
  await h.withEnv('H264 only', async (env) => {
    const p = await platform(env);
    const { page: old } = await p.patient('old-safari', H264_ONLY);
    await sends(old, 'the H264-only patient', H264);
    await decodesOthers(p.clinician, 'the clinician', 1, (c) => c === H264);
    // What it offered is all it can take: the clinician's browser is answered with H264.
    await sends(p.clinician, 'the clinician', H264);
    await decodesOthers(old, 'the H264-only patient', 1, (c) => c === H264);
    assert.deepEqual(env.pageErrors, []);
  });
});

test('a participant without H264 joining makes the H264 publisher switch to VP8 without leaving, and back', async () => {
  await h.withEnv('codec switch', async (env) => {
    const p = await platform(env);
    const { page: safari } = await p.patient('safari', PREFERS_H264);
    await sends(safari, 'the H264-preferring patient', H264);
    await decodesOthers(p.clinician, 'the clinician', 1, (c) => c === H264);
    const joinsBefore = (await safari.evaluate(() => window.consultCall.messages())).filter((m) => m.type === 'join_media').length;

    const { page: fx, visit } = await p.patient('firefox', 'firefox');
    await sends(safari, 'the patient after Firefox (no H264) joined', VP8);
    await decodesOthers(fx, 'the Firefox participant', 2, (c) => c === VP8);
    await decodesOthers(p.clinician, 'the clinician', 2, (c) => c === VP8);
    await decodesOthers(safari, 'the H264-preferring patient', 2);
    const messages = await safari.evaluate(() => window.consultCall.messages());
    assert.ok(messages.some((m) => m.type === 'publish_renegotiate'), 'the SFU asked for a new offer');
    assert.equal(messages.filter((m) => m.type === 'join_media').length, joinsBefore, 'it did not rejoin');
    for (const [who, page] of [['clinician', p.clinician], ['safari', safari], ['firefox', fx]]) {
      await keepsDecoding(page, who);
    }

    // Firefox is sent back to the waiting room: the publisher gets its own choice back.
    await p.sendBack(visit);
    await sends(safari, 'the patient once everyone decodes H264 again', H264);
    await decodesOthers(p.clinician, 'the clinician', 1, (c) => c === H264);
    await keepsDecoding(p.clinician, 'clinician');
    assert.deepEqual(env.pageErrors, []);
  });
});

test('four people with mixed codec preferences each decode the other three', async () => {
  await h.withEnv('four mixed', async (env) => {
    const p = await platform(env, PREFERS_H264);
    const pages = [['clinician (prefers H264)', p.clinician]];
    for (const [label, script] of [['chromium', undefined], ['firefox', 'firefox'], ['safari', PREFERS_H264]]) {
      pages.push([label, (await p.patient(label, script)).page]);
    }
    for (const [who, page] of pages) await decodesOthers(page, who, 3, (c) => c === VP8, 45_000);
    for (const [who, page] of pages) await keepsDecoding(page, who);
    assert.deepEqual(env.pageErrors, []);
  });
});
