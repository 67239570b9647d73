// Issue 14: calls from networks that block media, through coturn. The patient's browser
// runs in a network of its own (netns.mjs) whose nftables rules block what such networks
// block; coturn runs from the production configuration (coturn.mjs); the clinician's
// browser is on an open network. The first two tests walk the patient's journey on the
// real pages: the pre-call check says how media flows, the patient waits, the clinician
// calls them in, video and sound flow both ways, and the clinician's page shows each
// person's path. The third blocks everything but the web page: the check says what to do.
//
// Run by scripts/browser-tests (inside a private network namespace, as root), or
//   scripts/browser-tests tests/turn.test.mjs

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import * as h from './harness.mjs';
import * as p from './patient-helpers.mjs';
import * as s from './staff-helpers.mjs';
import { startCoturn, startSniFrontEnd } from './coturn.mjs';
import { childNetwork, counted, SERVER_IP, TURN_IP } from './netns.mjs';
import { PATH_LABEL } from '../public/js/media-path.js';
import { NET_SHORT, VIA_TEXT, networkFix } from '../public/js/patient-words.js';

h.watchdog(170);

/** consult on port 443 of the servers' address, as a hospital's front end would be. */
const ORIGIN = `http://${SERVER_IP}:443`;
/**
 * Browsers offer a camera only to secure pages: HTTPS, or loopback. A deployment serves
 * HTTPS; here plain HTTP on the veth's address counts as secure, in these browsers only.
 */
const SECURE_ORIGIN = `--unsafely-treat-insecure-origin-as-secure=${ORIGIN}`;

let staffBrowser;
before(async () => {
  staffBrowser = await chromium.launch({ executablePath: h.CHROMIUM, headless: true, args: [...h.CHROMIUM_ARGS, SECURE_ORIGIN] });
});
after(async () => {
  await staffBrowser?.close();
});

/** A network that lets out web traffic only. */
const ONLY_443 = `chain output {
  type filter hook output priority 0; policy drop;
  oifname "lo" accept
  tcp dport 443 accept
  counter drop
}`;

/**
 * The platform: a clinic, a clinician, and `consult serve` handing out `turn`'s URLs;
 * by default on port 443 of the servers' address, as a hospital's front end would be.
 */
async function platform(env, turn, { listen = `${SERVER_IP}:443`, publicUrl = ORIGIN } = {}) {
  const pf = await s.platform(env, {
    clinics: [['derm', 'Dermatology']],
    staff: [['dr.jones', 'Dr Jones', 'clinician', ['derm']]],
    extraEnv: {
      CONSULT_LISTEN: listen,
      CONSULT_PUBLIC_URL: publicUrl,
      // The SFU's media on the servers' address: reachable from the patient's network
      // unless its firewall says no.
      CONSULT_MEDIA_IP: SERVER_IP,
      CONSULT_TURN__SECRET: turn.secret,
      CONSULT_TURN__URLS: JSON.stringify(turn.urls),
    },
  });
  return { password: pf.passwords['dr.jones'], url: pf.url };
}

/**
 * The platform and coturn, and the patient's browser on a network whose firewall has
 * `rules` (nft, the body of a table).
 */
async function blockedPatient(env, rules) {
  const net = await childNetwork(env);
  await net.block(rules);
  const turn = await startCoturn(env, { ip: TURN_IP, sfu: SERVER_IP });
  const pf = await platform(env, turn);
  // The patient's browser trusts coturn's test certificate, and no other (Chromium checks
  // a TURN server's certificate as it checks a web site's).
  const patientBrowser = await net.launchChromium([SECURE_ORIGIN, `--ignore-certificate-errors-spki-list=${turn.spki}`]);
  env.servers.push({ close: () => patientBrowser.close().catch(() => {}) });
  return { net, pf, patientBrowser, turn };
}

/**
 * A patient on a network with `rules` checks, enters and is called in by a clinician on
 * an open network; the check and the clinician's page must say `path`.
 */
async function relayedCall(env, { rules, dropped, path, screenshot }) {
  const { net, pf, patientBrowser, turn } = await blockedPatient(env, rules);

  const doc = await s.openPage(staffBrowser, env, ORIGIN, 'clinician');
  await s.signIn(doc, 'dr.jones', pf.password);
  await s.waitStaff(doc, (x) => x.socket === 'open' && x.clinics.length === 1, 'clinician board');

  // The check: media flows through the relay, and the page says how, in plain English.
  const page = await p.openPatient(patientBrowser, env, ORIGIN, '/c/derm', 'patient');
  const checkStart = performance.now();
  await p.startCheck(page);
  const checked = await p.waitPatient(page, p.checkPassed, 'the check passes through the relay', 40_000);
  const checkMs = Math.round(performance.now() - checkStart);
  assert.equal(checked.check.via, path, 'the check names the way media flows');
  assert.equal(await page.locator('#net-detail').innerText(), VIA_TEXT[path]);
  assert.match(await page.locator('#net-result').innerText(), /connection works/);
  if (screenshot) await p.record(page, `check-${screenshot}`);
  await p.enterWaitingRoom(page, 'Pat Relay', 'patient', undefined, p.checkPassed);

  // Called in: video and sound both ways, the patient's through the relay.
  await s.waitStaff(doc, (x) => s.clinic(x, 'derm').waiting.some((v) => v.name === 'Pat Relay'), 'the clinician sees the patient');
  const callStart = performance.now();
  await doc.getByRole('button', { name: 'Call next patient in Dermatology', exact: true }).click();
  await h.waitFor(doc, h.receiving, 'the clinician receives the patient', 40_000, h.staffStats);
  await p.waitPatientStats(page, h.receiving, 'the patient receives the clinician', 40_000);
  const callMs = Math.round(performance.now() - callStart);
  console.log(`TURN ${path}: check passed ${checkMs} ms after the press; both decoding ${callMs} ms after "Call next patient"`);
  await p.waitPatient(page, (x) => x.path === path, `the patient's page reports ${path}`, 10_000);

  // Staff see each person's path: the patient's in the call panel and on the board, and
  // the clinician's own (on an open network: straight over UDP).
  const label = `Video: ${PATH_LABEL[path]}`;
  await doc.locator('#call-people li.person', { hasText: 'Pat Relay' }).getByText(label, { exact: true }).waitFor({ timeout: 10_000 });
  await doc.locator('li.visit', { hasText: 'Pat Relay' }).getByText(label, { exact: true }).waitFor({ timeout: 10_000 });
  await doc.locator('#call-people li.person', { hasText: 'You' }).getByText(`Video: ${PATH_LABEL.udp}`, { exact: true }).waitFor({ timeout: 10_000 });
  const board = await s.waitStaff(doc, (x) => s.clinic(x, 'derm').inConsultation[0]?.mediaPath === path, 'the board holds the path');
  assert.equal(s.clinic(board.value, 'derm').consultations[0].clinician_path, 'udp');
  if (screenshot) await s.check(doc, `staff-clinician-call-${screenshot}`);
  else await s.axe(doc, `clinician's call, the patient relayed (${path})`);

  // The firewall did its part: what it refuses, the patient's browser tried and lost.
  const listing = await net.ruleset();
  assert.ok(counted(listing, dropped) > 0, `the rule "${dropped}" dropped packets:\n${listing}`);
  return { page, doc, turn };
}
/** The TURN user names coturn allocated a relay for (`EXPIRY:ID`). */
const allocatedUsers = (turn) =>
  new Set([...turn.proc.stdout.matchAll(/user <([^>]+)>: incoming packet ALLOCATE processed, success/g)].map((m) => m[1]));

/**
 * The patient's network changes mid-call (the page hears `online`): ICE restarts on both
 * connections with a TURN credential minted for the restart (coturn checks a credential's
 * expiry when it allocates, so the one of a long call's start would be refused), coturn
 * allocates with that new credential, and media flows both ways again through the relay.
 */
async function restartThroughRelay({ page, doc, turn }, path) {
  const before = await p.waitPatientStats(page, (x) => x.credentialExpires.publisher && x.credentialExpires.subscriber, 'both connections gather with a TURN credential');
  const first = Math.max(before.credentialExpires.publisher, before.credentialExpires.subscriber);
  const allocatedBefore = allocatedUsers(turn);
  assert.ok([...allocatedBefore].some((u) => u.startsWith(`${first}:`)), `coturn allocated with the call's credential: ${[...allocatedBefore]}`);
  await h.sleep(1_100); // a credential minted from now expires later than the first
  const staffFrames = (await doc.evaluate(h.staffStats)).inboundVideo.framesDecoded;
  const restartedAt = performance.now();
  await page.evaluate(() => window.dispatchEvent(new Event('online')));
  const after = await p.waitPatientStats(
    page,
    (x) => x.state === 'connected' && x.credentialExpires.publisher > first && x.credentialExpires.subscriber > first,
    'both connections restarted with the new credential',
    20_000,
  );
  const fresh = after.credentialExpires.publisher;
  await h.waitFor(doc, (x) => x.inboundVideo.framesDecoded > staffFrames + 30, 'the clinician decodes the patient after the restart', 20_000, h.staffStats);
  await p.waitPatientStats(page, (x) => x.inboundVideo.framesDecoded > after.inboundVideo.framesDecoded + 30, 'the patient decodes the clinician after the restart', 20_000);
  console.log(`TURN ${path}: ICE restart with a fresh credential, media both ways ${Math.round(performance.now() - restartedAt)} ms after the network change`);
  const sent = (await page.evaluate(() => window.consultPatient.messages())).map((m) => `${m.dir}:${m.type}`);
  const asked = sent.lastIndexOf('out:restart_ice');
  assert.ok(asked >= 0 && sent.indexOf('in:ice_servers', asked) > asked, `restart_ice answered by ice_servers: ${sent.slice(-20)}`);
  assert.ok(sent.indexOf('out:publish_offer', sent.indexOf('in:ice_servers', asked)) > 0, 'the publisher re-offered after the new servers');
  const allocated = [...allocatedUsers(turn)].filter((u) => !allocatedBefore.has(u));
  assert.ok(allocated.some((u) => u.startsWith(`${fresh}:`)), `coturn allocated with the new credential: ${allocated}`);
  await p.waitPatient(page, (x) => x.path === path, `the patient's media still goes ${path}`, 10_000);
}

test('UDP blocked for the patient: the call connects through TURN over TCP, staff see it, and ICE restarts with a fresh credential', async () => {
  await s.withCallEnv('turn over tcp', async (env) =>
    restartThroughRelay(await relayedCall(env, {
        // Everything but UDP leaves the patient's network.
        rules: `chain output {
          type filter hook output priority 0; policy accept;
          oifname "lo" accept
          meta l4proto udp counter drop
        }`,
        dropped: 'udp',
        path: 'turn_tcp',
      }), 'turn_tcp'),
  );
});

test('only TCP 443 gets out: the call connects through TURN over TLS on 443, and staff see it', async () => {
  await s.withCallEnv('turn over tls', (env) =>
    relayedCall(env, {
        rules: ONLY_443,
        dropped: 'counter',
        path: 'turn_tls',
        screenshot: 'relayed',
      }),
  );
});

test('nothing but the web page gets out: the check says so, and what to tell the IT team', async () => {
  await s.withCallEnv('turn blocked', async (env) => {
    const { net, patientBrowser } = await blockedPatient(
      env,
      // The page's own server on 443, and nothing else: not even TURN over TLS on 443.
      `chain output {
        type filter hook output priority 0; policy drop;
        oifname "lo" accept
        ip daddr ${SERVER_IP} tcp dport 443 accept
        counter drop
      }`,
    );
    const page = await p.openPatient(patientBrowser, env, ORIGIN, '/c/derm', 'patient');
    const checkStart = performance.now();
    await p.startCheck(page);
    const checked = await p.waitPatient(page, (x) => x.check.network === 'failed', 'the check fails', 40_000);
    console.log(`TURN blocked: the check said so ${Math.round(performance.now() - checkStart)} ms after the press`);
    assert.equal(checked.check.via, null);
    assert.equal(await page.locator('#net-result').innerText(), NET_SHORT.failed);
    const problems = await page.locator('#check-problems').innerText();
    assert.ok(
      problems.includes(`${networkFix('failed', `${TURN_IP} port 443`)} Then press Check again.`),
      `the fix names the TURN server's web-traffic way in: ${problems}`,
    );
    assert.match(problems, /even the way that looks like secure web traffic[\s\S]*ask the IT team to allow connections to 198\.18\.0\.3 port 443/);
    await p.record(page, 'check-turn-blocked');
    assert.ok(counted(await net.ruleset(), 'counter') > 0, 'the browser tried the ways that were blocked');
  });
});

test('443 shared with the HTTPS front end (nginx, by SNI): the check goes through TURN over TLS', async () => {
  await s.withCallEnv('turn behind sni', async (env) => {
    const net = await childNetwork(env);
    await net.block(ONLY_443);
    // One public address for everything: nginx on 443 (infra/coturn/nginx-turn-sni.conf),
    // coturn's TLS on 5349 behind it, the web site behind it too, and the SFU's media.
    const turn = await startCoturn(env, { ip: SERVER_IP, sfu: SERVER_IP, tlsPort: 5349, name: 'turn.test' });
    turn.urls = turn.urls.map((u) => u.replace('turns:turn.test:5349', 'turns:turn.test:443'));
    const pf = await platform(env, turn, { listen: '127.0.0.1:0', publicUrl: 'https://video.test' });
    const front = await startSniFrontEnd(env, {
      ip: SERVER_IP,
      turnName: 'turn.test',
      turn: `${SERVER_IP}:5349`,
      siteName: 'video.test',
      consult: new URL(pf.url).host,
    });
    const patientBrowser = await net.launchChromium([
      `--host-resolver-rules=MAP video.test ${SERVER_IP}, MAP turn.test ${SERVER_IP}`,
      `--ignore-certificate-errors-spki-list=${turn.spki},${front.spki}`,
    ]);
    env.servers.push({ close: () => patientBrowser.close().catch(() => {}) });

    const page = await p.openPatient(patientBrowser, env, 'https://video.test', '/c/derm', 'patient');
    const checkStart = performance.now();
    await p.startCheck(page);
    const checked = await p.waitPatient(page, p.checkPassed, 'the check passes through the shared 443', 40_000);
    console.log(`TURN turn_tls behind nginx (SNI): check passed ${Math.round(performance.now() - checkStart)} ms after the press`);
    assert.equal(checked.check.via, 'turn_tls');
    assert.equal(await page.locator('#net-detail').innerText(), VIA_TEXT.turn_tls);
    assert.ok(counted(await net.ruleset(), 'counter') > 0, 'the browser tried the ways that were blocked');
  });
});
