// How media travels between this browser and the SFU: straight over UDP (best) or TCP,
// or through the platform's TURN relay, reached over UDP, TCP or TLS (the last is what
// gets through networks that allow only web traffic). Read from getStats(): the selected
// candidate pair's local candidate says which.
//
// The names are the wire protocol's `MediaPath` (signalling/protocol/src/lib.rs):
// 'udp', 'tcp', 'turn_udp', 'turn_tcp', 'turn_tls'.
//
// Used by the pre-call check (patient-check.js), and during a call by PathReporter, which
// tells the server (`media_path`) so that staff see each person's path.

/** Every path, best first. */
export const PATHS = ['udp', 'tcp', 'turn_udp', 'turn_tcp', 'turn_tls'];

/** What staff see for a person's path: a few words. */
export const PATH_LABEL = {
  udp: 'Direct (UDP)',
  tcp: 'Direct (TCP)',
  turn_udp: 'Relayed (UDP)',
  turn_tcp: 'Relayed (TCP)',
  turn_tls: 'Relayed (TLS)',
};

/** ... and what it means, for a title or a screen reader. */
export const PATH_MEANING = {
  udp: 'Video goes straight to the video service over UDP: the best connection.',
  tcp: 'Video goes straight to the video service over TCP, because their network blocks UDP.',
  turn_udp: 'Video goes through the relay server over UDP.',
  turn_tcp: 'Video goes through the relay server over TCP, because their network blocks UDP.',
  turn_tls: 'Video goes through the relay server as secure web traffic (TLS), because their network allows nothing else.',
};

/**
 * The selected candidate pair of an RTCStatsReport, or null. Chromium and Safari name it
 * on the transport; Firefox marks the pair itself (`selected`).
 */
export function selectedPair(stats) {
  let pair = null;
  stats.forEach((r) => {
    if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId) ?? pair;
  });
  if (pair) return pair;
  stats.forEach((r) => {
    if (r.type === 'candidate-pair' && (r.selected || (r.nominated && r.state === 'succeeded'))) pair ??= r;
  });
  return pair;
}

/**
 * How media flows on the connection these stats are from: one of PATHS, or null when no
 * candidate pair is selected yet. For a relay, the browser names the protocol it speaks to
 * the TURN server (`relayProtocol`); failing that, the TURN URL it came from says.
 */
export function pathOf(stats) {
  const pair = selectedPair(stats);
  const local = pair && stats.get(pair.localCandidateId);
  if (!local) return null;
  if (local.candidateType !== 'relay') return local.protocol === 'tcp' ? 'tcp' : 'udp';
  let via = local.relayProtocol;
  if (!via && typeof local.url === 'string') {
    via = local.url.startsWith('turns:') ? 'tls' : /transport=tcp/.test(local.url) ? 'tcp' : 'udp';
  }
  return via === 'tls' ? 'turn_tls' : via === 'tcp' ? 'turn_tcp' : 'turn_udp';
}

/** The round-trip time of the selected pair in ms, or null. */
export function rttOf(stats) {
  const rtt = selectedPair(stats)?.currentRoundTripTime;
  return typeof rtt === 'number' ? Math.round(rtt * 1000) : null;
}

/**
 * Tells the server how a call's media flows (`media_path`), once connected and whenever it
 * changes: every second it looks at the session's state, and while connected at its path.
 * A new session (after a rejoin, a dropped websocket) says it again.
 */
export class PathReporter {
  #media;
  #send;
  #timer = null;
  #sent = null;
  #intervalMs;

  /** `media`: a MediaSession (its `state` and `path()`); `send(msg)` on the websocket. */
  constructor(media, send, { intervalMs = 1000 } = {}) {
    this.#media = media;
    this.#send = send;
    this.#intervalMs = intervalMs;
  }

  /** The path last told to the server, or null. */
  get sent() {
    return this.#sent;
  }

  start() {
    if (this.#timer) return;
    this.#timer = setInterval(() => this.#tick().catch(() => {}), this.#intervalMs);
  }

  stop() {
    clearInterval(this.#timer);
    this.#timer = null;
    this.#sent = null;
  }

  async #tick() {
    if (this.#media.state !== 'connected') {
      this.#sent = null;
      return;
    }
    const path = await this.#media.path();
    if (!path || path === this.#sent || this.#media.state !== 'connected') return;
    this.#sent = path;
    this.#send({ type: 'media_path', path });
  }
}
