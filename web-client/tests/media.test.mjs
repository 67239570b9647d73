// Issue 3, end to end: a clinician and a patient, each in their own browser context on
// call.html, are joined to one consultation through signalling, and each receives the
// other's camera and microphone through the SFU: once with the SFU inside `consult`
// (single node), once with the SFU as a separate process registered through Redis, and
// once over ICE-TCP only, as behind a firewall that blocks UDP. And with two SFU nodes,
// the one carrying the call killed (`kill -9`) mid-call: both pages are back on the other
// node, decoding, with no click (issue 16; RUNS=n repeats it and prints p50/p95); and
// drained (SIGTERM): the call goes on there until the drain deadline, then moves to the
// other node (issue 17). During the calls, `/metrics` of consult and of the nodes show
// the participants and the packets forwarded.
//
// Run by scripts/browser-tests (inside a private network namespace), or directly:
//   cd web-client && node --test tests/

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import * as h from './harness.mjs';

h.watchdog(240 + 90 * Number(process.env.RUNS || 1));

const CLINIC = 'dermatology';
const CLINICIAN = 'dr.jones';

let browser;
before(async () => {
  browser = await h.launchBrowser();
  console.log(`chromium ${browser.version()}`);
});
after(async () => {
  await browser?.close();
});

/** The page says the call has ended, its media session is over, and no video is left. */
const callEnded = (s) =>
  s.callEnded && !['joining', 'connecting', 'connected'].includes(s.media) && s.remoteVideos === 0 && /ended/i.test(s.status);

/**
 * The scenario both tests run against a store (`dataDir` or `redisUrl`): a clinic and a
 * clinician from the command line; the clinician's page open; a patient enters and
 * waits; the clinician admits them by REST; both pages must be receiving each other's
 * media within 30 s; then the consultation ends and both pages must say so. `initScript`
 * runs in both pages first; `whileConnected(page, who)` checks each before the end, then
 * `duringCall({clinician, patient})` once.
 */
async function consultation(env, store, { extraEnv, initScript, whileConnected, duringCall, started } = {}) {
  const password = randomBytes(12).toString('hex');
  await h.consultCli(env, store, ['clinic', 'add', CLINIC, '--name', 'Dermatology', '--open-link']);
  await h.consultCli(
    env,
    store,
    ['staff', 'add', CLINICIAN, '--name', 'Dr Jones', '--role', 'clinician', '--clinic', CLINIC, '--password-stdin'],
    `${password}\n`,
  );
  const server = await h.startConsult(env, { ...store, extraEnv });
  const origin = server.url;
  started?.(server);

  const { token } = await h.rest(server.url).post('/api/staff/sign-in', { username: CLINICIAN, password });
  const staff = h.rest(server.url, token);
  const clinician = await h.openCall(browser, env, origin, token, 'clinician', { initScript });
  await h.waitForState(clinician, (s) => s.socket === 'open' && s.role === 'clinician', 'clinician page signed in');

  const entered = await h.rest(server.url).post('/api/visits', {
    entry: { kind: 'open_link', clinic: CLINIC },
    name: 'Pat Example',
  });
  const patient = await h.openCall(browser, env, origin, entered.visit_token, 'patient', { initScript });
  await h.waitForState(patient, (s) => s.patient === 'waiting', 'patient page in the waiting room');
  // The patient page took the credential out of its address bar.
  assert.ok(!patient.url().includes(entered.visit_token), 'the token stays in the address bar');

  const admittedAt = performance.now();
  const admittedAtWall = Date.now();
  await staff.post('/api/commands', { type: 'admit_next', clinic: CLINIC });
  const [c, p] = await Promise.all([
    h.waitFor(clinician, h.receiving, 'clinician receives the patient', 30_000),
    h.waitFor(patient, h.receiving, 'patient receives the clinician', 30_000),
  ]);
  const ms = (t) => Math.round(t - admittedAt);
  const both = Math.max(ms(c.at), ms(p.at));
  console.log(
    `admit -> decoding: clinician ${ms(c.at)} ms, patient ${ms(p.at)} ms, both ${both} ms ` +
      `(clinician ${JSON.stringify(c.value.inboundVideo)}, patient ${JSON.stringify(p.value.inboundVideo)})`,
  );
  for (const [who, page, seen] of [['clinician', clinician, c], ['patient', patient, p]]) {
    console.log(`  ${who}: ${await timeline(page, admittedAtWall)}, decoding ${ms(seen.at)}`);
  }
  // Transport-wide congestion control: the SFU's feedback lets each browser raise its
  // estimate of what it can send above where it starts (300 kbit/s in Chromium; without
  // feedback it stays there exactly). A tenth more is growth. How fast it climbs depends on
  // the machine's load and on the SFU's REMB, which at the start of a call can hold a
  // publisher near what its subscriber's young estimate allows: one side of this test
  // reached 455, 535, 396 and 376 kbit/s in 15 s on some runs, 2,600-5,600 on others (a
  // slow start the probing planned with the pacer should remove; see load-tests/REPORT.md).
  const estimates = await Promise.all(
    [clinician, patient].map((page) =>
      h.waitFor(page, (s) => s.availableOutgoingBitrate > 330_000, 'send-side estimate grows', 15_000),
    ),
  );
  console.log(`  send-side estimates: ${estimates.map((e) => Math.round(e.value.availableOutgoingBitrate / 1000)).join(' and ')} kbit/s`);
  for (const [who, v] of [['clinician', c.value], ['patient', p.value]]) {
    assert.equal(v.remoteStreams, 1, `${who} sees one other participant`);
  }
  // What each sends (its own stats may lag the other side's first decoded frame a little).
  for (const [who, page] of [['clinician', clinician], ['patient', patient]]) {
    await h.waitFor(page, (v) => v.outboundVideo.packetsSent > 0 && v.outboundAudio.packetsSent > 0, `${who} sends media`, 10_000);
  }

  if (whileConnected) {
    await whileConnected(clinician, 'clinician');
    await whileConnected(patient, 'patient');
  }
  if (duringCall) await duringCall({ clinician, patient });
  const room = await staff.get(`/api/clinics/${CLINIC}/room`);
  assert.equal(room.consultations.length, 1, `one consultation in ${JSON.stringify(room)}`);
  await staff.post('/api/commands', { type: 'end_consultation', clinic: CLINIC, consultation: room.consultations[0].id });
  await Promise.all([
    h.waitForState(clinician, callEnded, 'clinician page says the call ended'),
    h.waitForState(patient, callEnded, 'patient page says the call ended'),
  ]);
  for (const [who, page] of [['clinician', clinician], ['patient', patient]]) {
    // The node's word comes by its own path (the control link), so it may follow the
    // room's `consultation_ended` by a few milliseconds.
    await h.waitFor(
      page,
      (messages) => messages.some((m) => m.type === 'media_ended' && m.reason === 'consultation_ended'),
      `${who} was sent media_ended {reason: consultation_ended}`,
      5_000,
      () => window.consultCall.messages(),
    );
    const stats = await page.evaluate(() => window.consultCall.stats());
    assert.equal(stats.publisher, null, `${who}'s peer connections are closed`);
  }
  assert.deepEqual(env.pageErrors, [], 'no JavaScript errors in the pages');
  return both;
}

/** When each step of joining media happened in a page, in ms after `t0` (wall clock). */
async function timeline(page, t0) {
  const messages = await page.evaluate(() => window.consultCall.messages());
  const first = (dir, type) => messages.find((m) => m.dir === dir && m.type === type && m.at >= t0);
  const steps = [
    ['join_media', first('out', 'join_media')],
    ['media_joined', first('in', 'media_joined')],
    ['publish_answer', first('in', 'publish_answer')],
    ['media_connection', first('in', 'media_connection')],
    ['subscriber_offer', first('in', 'subscriber_offer')],
  ];
  return steps.map(([name, m]) => `${name} ${m ? m.at - t0 : '-'}`).join(', ');
}

/** Prometheus text from `url` (this host, directly), as name{labels} → value. */
async function scrape(url, headers = {}) {
  const res = await fetch(url, { headers });
  assert.equal(res.status, 200, `GET ${url}: ${res.status}`);
  const samples = new Map();
  for (const line of (await res.text()).split('\n')) {
    const m = line.match(/^([a-z_]+(?:\{[^}]*\})?) (\S+)$/);
    if (m) samples.set(m[1], Number(m[2]));
  }
  return samples;
}

/** The sum of every series of `name` (any labels). */
const total = (samples, name) =>
  [...samples].filter(([k]) => k === name || k.startsWith(`${name}{`)).reduce((a, [, v]) => a + v, 0);

test('two browsers in one consultation through the in-process SFU, seen in /metrics', async () => {
  await h.withEnv('in-process SFU', async (env) => {
    const dataDir = await env.tmpdir();
    let origin;
    await consultation(env, { dataDir }, {
      started: (server) => {
        origin = server.url;
      },
      duringCall: async () => {
        const first = await scrape(`${origin}/metrics`);
        assert.equal(first.get('sfu_participants'), 2, 'the call\'s two participants');
        assert.equal(first.get('sfu_consultations'), 1);
        assert.equal(first.get(`consult_patients_in_consultation{clinic="${CLINIC}"}`), 1);
        assert.equal(first.get(`consult_patients_waiting{clinic="${CLINIC}"}`), 0);
        assert.equal(first.get(`consult_admissions_total{clinic="${CLINIC}"}`), 1);
        assert.equal(first.get(`consult_wait_seconds_count{clinic="${CLINIC}"}`), 1);
        assert.equal(first.get('consult_websocket_connections{kind="patient"}'), 1);
        assert.equal(first.get('consult_websocket_connections{kind="staff"}'), 1);
        assert.ok(total(first, 'consult_store_operation_seconds_count') > 0, 'store operations timed');
        await h.sleep(1_000);
        const later = await scrape(`${origin}/metrics`);
        const forwarded = total(later, 'sfu_forwarded_packets_total') - total(first, 'sfu_forwarded_packets_total');
        const received = total(later, 'sfu_received_packets_total') - total(first, 'sfu_received_packets_total');
        console.log(`  /metrics: ${forwarded} packets forwarded and ${received} received in 1 s; busy ${total(later, 'sfu_media_loop_busy_seconds_total').toFixed(3)} s`);
        // Two people each sending audio (50 packets/s) and video: well over 100 a second.
        assert.ok(forwarded > 100, `packets forwarded in a second: ${forwarded}`);
        assert.ok(received > 100, `packets received in a second: ${received}`);
        // Each subscriber's link is sampled every 5 s from its browser's receiver reports.
        let links;
        for (let i = 0; i < 40; i++) {
          links = await scrape(`${origin}/metrics`);
          if (links.get('sfu_subscriber_rtt_seconds_count') > 0) break;
          await h.sleep(250);
        }
        console.log(`  /metrics: ${links.get('sfu_subscriber_rtt_seconds_count')} RTT samples (sum ${links.get('sfu_subscriber_rtt_seconds_sum')} s), ${links.get('sfu_subscriber_loss_ratio_count')} loss samples (sum ${links.get('sfu_subscriber_loss_ratio_sum')})`);
        assert.ok(links.get('sfu_subscriber_rtt_seconds_count') > 0, 'subscribers\' links sampled');
        // Through a proxy on this host (X-Forwarded-For), the metrics are not served.
        const proxied = await fetch(`${origin}/metrics`, { headers: { 'x-forwarded-for': '203.0.113.7' } });
        assert.equal(proxied.status, 403);
      },
    });
  });
});

test('two browsers in one consultation through an SFU process registered in Redis', async () => {
  await h.withEnv('SFU process via Redis', async (env) => {
    // No skipping: a missing redis-server or sfu binary fails this test.
    const dir = await env.tmpdir();
    const redis = await h.startRedis(env, dir);
    await h.startSfu(env, { redisUrl: redis.url, nodeId: 'sfu-1' });
    await consultation(env, { dataDir: dir, redisUrl: redis.url });
  });
});

/** The SFU node records in Redis (`consult:sfu:nodes`), by node id. */
async function nodeRecords(redis) {
  const { stdout } = await execFileAsync('redis-cli', ['-s', redis.socket, '--raw', 'HGETALL', 'consult:sfu:nodes']);
  const lines = stdout.trim().split('\n');
  const out = {};
  for (let i = 0; i + 1 < lines.length; i += 2) out[lines[i]] = JSON.parse(lines[i + 1]);
  return out;
}

const execFileAsync = promisify(execFile);
const RUNS = Number(process.env.RUNS || 1);
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil((p / 100) * xs.length) - 1)];

test('an SFU node killed mid-call: both pages are back on the other node, decoding, with no click', async () => {
  const resumed = [];
  for (let run = 1; run <= RUNS; run++) {
    await h.withEnv(`SFU node lost (run ${run})`, async (env) => {
      const dir = await env.tmpdir();
      const redis = await h.startRedis(env, dir);
      const nodes = {
        'sfu-1': await h.startSfu(env, { redisUrl: redis.url, nodeId: 'sfu-1' }),
        'sfu-2': await h.startSfu(env, { redisUrl: redis.url, nodeId: 'sfu-2' }),
      };
      await consultation(env, { dataDir: dir, redisUrl: redis.url }, {
        duringCall: async ({ clinician, patient }) => {
          // The node carrying the call: the one with its two participants.
          let carrying;
          for (let i = 0; i < 50 && !carrying; i++) {
            const records = await nodeRecords(redis);
            carrying = Object.keys(records).find((id) => records[id].participants === 2);
            if (!carrying) await h.sleep(100);
          }
          assert.ok(carrying, 'a node reports the call');
          const other = carrying === 'sfu-1' ? 'sfu-2' : 'sfu-1';
          const killedAt = performance.now();
          const killedAtPage = await Promise.all([clinician, patient].map((p) => p.evaluate(() => performance.now())));
          nodes[carrying].proc.child.kill('SIGKILL');
          // Back: a new media session (joined after the kill) decoding the other's video
          // and hearing their audio.
          const [c, p] = await Promise.all(
            [clinician, patient].map((page, k) =>
              h.waitFor(
                page,
                (s) => s.marks.joined > killedAtPage[k] && s.inboundVideo.framesDecoded > 0 && s.inboundAudio.packetsReceived > 0,
                `${k ? 'patient' : 'clinician'} decodes again after the node was killed`,
                15_000,
              ),
            ),
          );
          const ms = Math.round(Math.max(c.at, p.at) - killedAt);
          resumed.push(ms);
          console.log(`node ${carrying} killed: both decoding again on ${other} after ${ms} ms (clinician ${Math.round(c.at - killedAt)}, patient ${Math.round(p.at - killedAt)})`);
          // The other node says so at its next heartbeat (every second).
          let records;
          for (let i = 0; i < 30; i++) {
            records = await nodeRecords(redis);
            if (records[other]?.participants === 2) break;
            await h.sleep(100);
          }
          assert.equal(records[other]?.participants, 2, `the call is on ${other} now: ${JSON.stringify(records)}`);
          for (const page of [clinician, patient]) {
            const state = await page.evaluate(() => window.consultCall.state());
            assert.ok(!state.callEnded, 'the call goes on');
          }
        },
      });
    });
  }
  console.log(`SFU node lost: media back in both pages p50 ${pct(resumed, 50)} ms, p95 ${pct(resumed, 95)} ms over ${resumed.length} runs`);
  // The bar is 2 s; on a loaded CI machine one run may take longer.
  assert.ok(pct(resumed, 50) < 5_000, `media back within 5 s: ${resumed}`);
});

/**
 * In the page: peer connections see only the SFU's TCP candidates (as if a firewall
 * dropped UDP), and are kept in `window.__pcs` for inspection.
 */
function udpBlocked() {
  const Native = window.RTCPeerConnection;
  window.__pcs = [];
  const tcpOnly = (sdp) =>
    sdp
      .split('\r\n')
      .filter((l) => !(l.startsWith('a=candidate:') && / udp /i.test(l)))
      .join('\r\n');
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      window.__pcs.push(this);
    }
    setRemoteDescription(d) {
      return super.setRemoteDescription(d && d.sdp ? { type: d.type, sdp: tcpOnly(d.sdp) } : d);
    }
  };
}

/** The protocol of each live peer connection's selected candidate pair, in the page. */
function selectedProtocols() {
  return Promise.all(
    window.__pcs
      .filter((pc) => pc.connectionState === 'connected')
      .map(async (pc) => {
        const stats = [...(await pc.getStats()).values()];
        const transport = stats.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
        const pair = stats.find((s) => s.id === transport?.selectedCandidatePairId);
        return stats.find((s) => s.id === pair?.localCandidateId)?.protocol ?? 'none';
      }),
  );
}

test('with UDP blocked, two browsers connect over ICE-TCP through the in-process SFU', async () => {
  await h.withEnv('ICE-TCP only', async (env) => {
    const dataDir = await env.tmpdir();
    await consultation(env, { dataDir }, {
      extraEnv: { CONSULT_MEDIA_ICE_TCP: 'true' },
      initScript: udpBlocked,
      whileConnected: async (page, who) => {
        const protocols = await page.evaluate(selectedProtocols);
        // Both connections of each person (publisher and subscriber) run over TCP.
        assert.deepEqual(protocols, ['tcp', 'tcp'], `${who}'s selected candidate pairs`);
      },
    });
  });
});

/** The node that carries the call: the one whose record counts its two participants. */
async function carryingNode(redis) {
  for (let i = 0; i < 50; i++) {
    const records = await nodeRecords(redis);
    const carrying = Object.keys(records).find((id) => records[id].participants === 2);
    if (carrying) return carrying;
    await h.sleep(100);
  }
  assert.fail('a node reports the call');
}

const DRAIN_SECONDS = 2;

test('an SFU node drained (SIGTERM) mid-call: the call goes on until its deadline, then both pages are on the other node, decoding, with no click', async () => {
  const moved = [];
  for (let run = 1; run <= RUNS; run++) {
    await h.withEnv(`SFU node drained (run ${run})`, async (env) => {
      const dir = await env.tmpdir();
      const redis = await h.startRedis(env, dir);
      const args = ['--drain-seconds', String(DRAIN_SECONDS)];
      const nodes = {
        'sfu-1': await h.startSfu(env, { redisUrl: redis.url, nodeId: 'sfu-1', args }),
        'sfu-2': await h.startSfu(env, { redisUrl: redis.url, nodeId: 'sfu-2', args }),
      };
      await consultation(env, { dataDir: dir, redisUrl: redis.url }, {
        duringCall: async ({ clinician, patient }) => {
          const carrying = await carryingNode(redis);
          const other = carrying === 'sfu-1' ? 'sfu-2' : 'sfu-1';
          // The carrying node's own /metrics show the call and what it forwards.
          const metrics = await scrape(`http://${nodes[carrying].addr}/metrics`);
          assert.equal(metrics.get('sfu_participants'), 2, 'the node counts the call');
          assert.ok(total(metrics, 'sfu_forwarded_packets_total') > 0, 'the node forwards packets');
          const before = await Promise.all([clinician, patient].map((p) => p.evaluate(() => window.consultCall.stats())));
          const termAtWall = Date.now();
          nodes[carrying].proc.child.kill('SIGTERM');
          // It says at once that it takes no new consultation.
          let records;
          for (let i = 0; i < 20; i++) {
            records = await nodeRecords(redis);
            if (records[carrying]?.draining) break;
            await h.sleep(50);
          }
          assert.equal(records[carrying]?.draining, true, `${carrying} is draining: ${JSON.stringify(records)}`);
          assert.equal(records[carrying]?.moving, false, 'and not moving its calls yet');
          // Until the deadline the call goes on where it is: still decoding, never ended.
          await h.sleep(DRAIN_SECONDS * 1000 - 700);
          for (const [k, page] of [clinician, patient].entries()) {
            const s = await page.evaluate(() => window.consultCall.stats());
            assert.ok(s.inboundVideo.framesDecoded > before[k].inboundVideo.framesDecoded, 'still decoding during the drain');
            const msgs = await page.evaluate(() => window.consultCall.messages());
            assert.ok(!msgs.some((m) => m.type === 'media_ended' && m.at >= termAtWall), 'no media_ended before the deadline');
          }
          // Then: told node_moved, joined again on the other node, decoding both ways.
          const [c, p] = await Promise.all(
            [clinician, patient].map(async (page, k) => {
              const told = await h.waitFor(
                page,
                (msgs) => msgs.find((m) => m.type === 'media_ended' && m.reason === 'node_moved'),
                `${k ? 'patient' : 'clinician'} told the call moves`,
                DRAIN_SECONDS * 1000 + 5_000,
                () => window.consultCall.messages(),
              );
              const movedAt = told.value.find((m) => m.type === 'media_ended' && m.reason === 'node_moved').at;
              const movedAtPage = await page.evaluate((at) => performance.now() - (Date.now() - at), movedAt);
              await h.waitFor(
                page,
                (s) => s.marks.joined > movedAtPage && s.inboundVideo.framesDecoded > 0 && s.inboundAudio.packetsReceived > 0,
                `${k ? 'patient' : 'clinician'} decodes again after the move`,
                15_000,
              );
              return { movedAt, backAt: Date.now() };
            }),
          );
          const ms = Math.max(c.backAt - c.movedAt, p.backAt - p.movedAt);
          moved.push(ms);
          console.log(
            `node ${carrying} drained: told to move ${Math.round(c.movedAt - termAtWall)} ms after SIGTERM; ` +
              `both decoding again on ${other} ${ms} ms after being told`,
          );
          for (let i = 0; i < 30; i++) {
            records = await nodeRecords(redis);
            if (records[other]?.participants === 2) break;
            await h.sleep(100);
          }
          assert.equal(records[other]?.participants, 2, `the call is on ${other} now: ${JSON.stringify(records)}`);
          // The drained node, carrying nobody, stopped and took its record with it.
          await Promise.race([nodes[carrying].proc.exited, h.sleep(5_000)]);
          assert.notEqual(nodes[carrying].proc.exitCode, undefined, `${carrying} stopped after its drain`);
          assert.equal((await nodeRecords(redis))[carrying], undefined, 'its record is gone');
          for (const page of [clinician, patient]) {
            const state = await page.evaluate(() => window.consultCall.state());
            assert.ok(!state.callEnded, 'the call goes on');
          }
        },
      });
    });
  }
  console.log(`SFU node drained: media back in both pages p50 ${pct(moved, 50)} ms, p95 ${pct(moved, 95)} ms after the move, over ${moved.length} runs`);
  assert.ok(pct(moved, 50) < 3_000, `media back on the other node within 3 s of the move: ${moved}`);
});
