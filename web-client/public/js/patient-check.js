// The patient's pre-call check, the parts that are not the screen: a microphone level
// meter, a speaker test tone, and a real connection to the platform's own media server
// (`/api/media-check`) that says whether media can flow, and how (media-path.js: straight
// over UDP or TCP, or through the TURN relay over UDP, TCP or TLS). Camera and microphone
// are devices.js's.
//
// Nothing here touches the DOM; patient-check-screen.js renders what these report.

import { pathOf, rttOf } from './media-path.js';

// --- sound: one AudioContext for the page ------------------------------------------------

let audioCtx = null;

/** The page's AudioContext (created on first use; browsers may start it suspended). */
export function audioContext() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!audioCtx && Ctx) audioCtx = new Ctx();
  return audioCtx;
}

/** Resumes the AudioContext (call from a click: browsers allow sound after a gesture). */
export async function resumeAudio() {
  const ctx = audioContext();
  if (ctx && ctx.state === 'suspended') await ctx.resume().catch(() => {});
  return ctx?.state === 'running';
}

/** Plays two short tones on the speaker; resolves when they have finished. */
export async function playTestTone() {
  const ctx = audioContext();
  if (!ctx) return false;
  await resumeAudio();
  const gain = ctx.createGain();
  gain.connect(ctx.destination);
  const t0 = ctx.currentTime + 0.05;
  for (const [i, freq] of [[0, 523.25], [1, 659.25]]) {
    const osc = ctx.createOscillator();
    osc.frequency.value = freq;
    osc.connect(gain);
    const start = t0 + i * 0.6;
    // Soft edges: no click at the start or end of each tone.
    gain.gain.setValueAtTime(0, start);
    gain.gain.linearRampToValueAtTime(0.25, start + 0.04);
    gain.gain.setValueAtTime(0.25, start + 0.45);
    gain.gain.linearRampToValueAtTime(0, start + 0.5);
    osc.start(start);
    osc.stop(start + 0.52);
  }
  await new Promise((r) => setTimeout(r, 1300));
  gain.disconnect();
  return true;
}

/**
 * Measures the level of the stream's microphone, calling `onLevel(0..1)` ten times a
 * second. Returns a function that stops it.
 */
export function watchLevel(stream, onLevel) {
  const ctx = audioContext();
  const track = stream.getAudioTracks()[0];
  if (!ctx || !track) return () => {};
  const source = ctx.createMediaStreamSource(new MediaStream([track]));
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  const timer = setInterval(() => {
    if (ctx.state !== 'running') {
      onLevel(0, ctx.state);
      return;
    }
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (let i = 0; i < buf.length; i++) sum += buf[i] * buf[i];
    const rms = Math.sqrt(sum / buf.length);
    // -60 dBFS (silence) .. 0 dBFS (loudest) onto 0..1.
    const db = rms > 0 ? 20 * Math.log10(rms) : -100;
    onLevel(Math.min(1, Math.max(0, (db + 60) / 60)), ctx.state);
  }, 100);
  return () => {
    clearInterval(timer);
    source.disconnect();
  };
}

// --- the connection check ---------------------------------------------------------------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Resolves when `pc` has gathered its candidates, after `ms` (use what there is), or
 * `afterRelayMs` after its first relay candidate: on a network that blocks UDP, gathering
 * waits for a UDP TURN allocation that never answers, while the TCP and TLS relays are
 * ready within a round trip.
 */
function gathered(pc, ms, afterRelayMs = 1000) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    let relayTimer = null;
    const done = () => {
      if (pc.iceGatheringState === 'complete') finish();
    };
    const candidate = (e) => {
      if (e.candidate?.type === 'relay' && !relayTimer) relayTimer = setTimeout(finish, afterRelayMs);
    };
    const timer = setTimeout(finish, ms);
    function finish() {
      clearTimeout(timer);
      clearTimeout(relayTimer);
      pc.removeEventListener('icegatheringstatechange', done);
      pc.removeEventListener('icecandidate', candidate);
      resolve();
    }
    pc.addEventListener('icegatheringstatechange', done);
    pc.addEventListener('icecandidate', candidate);
  });
}

/** Resolves true once `pc` is connected, false if it fails or `ms` pass first. */
function connected(pc, ms) {
  return new Promise((resolve) => {
    const check = () => {
      if (pc.connectionState === 'connected') finish(true);
      else if (pc.connectionState === 'failed' || pc.connectionState === 'closed') finish(false);
    };
    const timer = setTimeout(() => finish(false), ms);
    function finish(ok) {
      clearTimeout(timer);
      pc.removeEventListener('connectionstatechange', check);
      resolve(ok);
    }
    pc.addEventListener('connectionstatechange', check);
    check();
  });
}

/** A silent audio track, so that the check can run without camera or microphone. */
function silentTrack() {
  const ctx = audioContext();
  if (!ctx) return null;
  const osc = ctx.createOscillator();
  const gain = ctx.createGain();
  gain.gain.value = 0;
  const dest = ctx.createMediaStreamDestination();
  osc.connect(gain).connect(dest);
  osc.start();
  const track = dest.stream.getAudioTracks()[0];
  track.addEventListener('ended', () => osc.stop());
  return track;
}

/**
 * The web-traffic way in, for a person's IT team: the host and port of the first TURN over
 * TLS server (`turns:`) the check was given, e.g. 'turn.example.org port 443', or null.
 */
export function webTrafficServer(iceServers) {
  for (const s of iceServers || []) {
    for (const url of [].concat(s.urls || [])) {
      const m = /^turns:(\[[^\]]+\]|[^:?]+)(?::(\d+))?/.exec(url);
      if (m) return `${m[1]} port ${m[2] || '5349'}`;
    }
  }
  return null;
}

/**
 * Sets up a real, short-lived publisher connection to the platform's media server and
 * sends the stream's tracks on it. Resolves (never rejects) with
 *   { network: 'ok'|'partial'|'failed'|'unreachable'|'unavailable'|'rate_limited',
 *     via: 'udp'|'tcp'|'turn_udp'|'turn_tcp'|'turn_tls'|null, rttMs, webServer }
 * ok: connected and the server reports receiving our sound (remote-inbound-rtp; a
 * silent track when there is no microphone);
 * partial: connected, but no report of our media arrived in time. `webServer`: where
 * the TURN server takes TLS (webTrafficServer), for what to tell an IT team.
 */
export async function checkConnection(stream, { signal } = {}) {
  let info;
  let webServer = null;
  try {
    const res = await fetch('/api/media-check', { signal });
    if (!res.ok) return { network: res.status === 429 ? 'rate_limited' : 'unavailable', via: null, rttMs: null };
    info = await res.json();
    webServer = webTrafficServer(info.ice_servers);
  } catch (e) {
    if (signal?.aborted) throw e;
    return { network: 'unreachable', via: null, rttMs: null };
  }
  let pc;
  let extra = null;
  try {
    pc = new RTCPeerConnection({ iceServers: info.ice_servers || [] });
  } catch {
    return { network: 'failed', via: null, rttMs: null, webServer };
  }
  const abort = () => pc.close();
  signal?.addEventListener('abort', abort);
  try {
    // Always some sound: the media server's reports on audio are the proof that our
    // media reached it (it reports on no camera: see sfu/src/engine/reports.rs), so
    // without a microphone a silent track goes instead.
    const tracks = stream.getTracks().filter((t) => t.readyState === 'live');
    if (!tracks.some((t) => t.kind === 'audio')) {
      extra = silentTrack();
      if (extra) tracks.push(extra);
    }
    for (const t of tracks) pc.addTransceiver(t, { direction: 'sendonly' });
    await pc.setLocalDescription(await pc.createOffer());
    // No trickle on this endpoint: the offer carries our candidates (a TURN server may
    // take a while; 1 s after the first relay candidate, or after 5 s, we send what we
    // have).
    await gathered(pc, 5000);
    let res;
    try {
      res = await fetch('/api/media-check', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ sdp: pc.localDescription.sdp }),
        signal,
      });
    } catch (e) {
      if (signal?.aborted) throw e;
      return { network: 'unreachable', via: null, rttMs: null };
    }
    if (!res.ok) return { network: res.status === 429 ? 'rate_limited' : 'unavailable', via: null, rttMs: null };
    const { sdp } = await res.json();
    await pc.setRemoteDescription({ type: 'answer', sdp });
    if (!(await connected(pc, 12_000))) return { network: 'failed', via: null, rttMs: null, webServer };
    // The media server's receiver reports are the proof that our media reached it.
    const end = Date.now() + 6000;
    let path = { via: null, rttMs: null };
    while (Date.now() < end && !signal?.aborted) {
      const stats = await pc.getStats();
      path = { via: pathOf(stats), rttMs: rttOf(stats) };
      let reached = false;
      stats.forEach((r) => {
        if (r.type === 'remote-inbound-rtp') reached = true;
      });
      if (reached) return { network: 'ok', ...path, webServer };
      await sleep(250);
    }
    if (signal?.aborted) throw new DOMException('aborted', 'AbortError');
    return { network: 'partial', ...path, webServer };
  } catch (e) {
    if (signal?.aborted) throw e;
    console.warn('connection check:', e);
    return { network: 'failed', via: null, rttMs: null, webServer };
  } finally {
    signal?.removeEventListener('abort', abort);
    pc.close();
    extra?.stop();
  }
}
