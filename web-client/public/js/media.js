// The browser side of one media session: what a page needs to send its camera and
// microphone to the consultation's SFU and to receive everyone else's, over the
// signalling websocket. No framework, no build step; the page owns the websocket and
// the DOM, this module owns the two peer connections.
//
// The wire protocol is defined in signalling/protocol/src/lib.rs (golden JSON examples in
// signalling/protocol/fixtures/). In short:
//
//   browser -> server: join_media, publish_offer, subscriber_answer, ice_candidate,
//                      leave_media, media_state, receive_video
//   server -> browser: media_joined, publish_answer, subscriber_offer,
//                      subscriber_answer_applied, ice_candidate, media_connection,
//                      media_ended, peer_media_state, publish_renegotiate, publish_layers,
//                      media_link
//
// Each participant has two connections, so that each side only ever offers on its own:
// the *publisher* (the browser offers; it sends camera and microphone) and the
// *subscriber* (the SFU offers, again whenever someone joins or leaves; the browser
// answers; it receives one MediaStream per other participant, named by its stream id).
// The SFU may ask for a new publisher offer (`publish_renegotiate`) when the video codecs
// everyone in the consultation can decode change: its answer then picks another codec.
// It may also ask the browser to pause some simulcast layers of a video (`publish_layers`,
// by rid) while nobody needs them: in a call of two the one who receives it takes the full
// layer, at the rate their link carries, as in a direct call.
//
// Media state: what this browser sends (microphone on, a picture, a shared screen) goes
// to the others as `media_state` after every `media_joined` and whenever it changes
// (`setLocalState`); what each other participant sends arrives as `peer_media_state`,
// named by the id of the MediaStream their tracks arrive in. It may come before or after
// that stream's tracks: it is kept by stream id (`peerState(id)`) for the page to show
// when the tile appears, and reported to `onPeerState(id, state)`.
//
// Sound only: `setReceiveVideo(false)` asks the SFU to send this page nobody's video (for a
// link that cannot carry it), again after every media_joined, until set back. The SFU's
// figures for this page's downlink (its bandwidth estimate, round trip and loss) arrive
// every few seconds as `media_link` and are kept as `link`.
//
// Usage:
//   const media = new MediaSession({ send, localStream, onRemoteStream,
//                                    onRemoteStreamRemoved, onState, onPeerState });
//   media.setLocalState({ audio: true, video: false, screen: false });
//   ws.onmessage = (e) => { const msg = JSON.parse(e.data); if (media.handle(msg)) return; ... };
//   media.join(consultationId);   // later: media.leave(), or media.close() if the socket dropped
//   await media.stats();          // summed getStats() figures, for tests and diagnostics
//   await media.path();           // how media flows now: 'udp' ... 'turn_tls' (media-path.js)

import { pathOf, selectedPair } from './media-path.js';

/**
 * Runs an action again later after a failure (joining a call that could not be joined):
 * after 1 s, 2 s, 4 s ... at most 15 s; `succeeded()` starts the count again.
 */
export class Backoff {
  #timer = null;
  #attempt = 0;

  constructor(run, { base = 1000, max = 15_000 } = {}) {
    this.run = run;
    this.base = base;
    this.max = max;
  }

  /** Whether a retry is waiting. */
  get pending() {
    return this.#timer !== null;
  }

  later() {
    clearTimeout(this.#timer);
    const delay = Math.min(this.max, this.base * 2 ** this.#attempt);
    this.#attempt += 1;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.run();
    }, delay);
  }

  /**
   * Runs within `spread` ms (at random, so that the many pages a lost media server
   * carried do not all ask at once), then backs off as `later` does if that fails too:
   * for a failure whose cause is already gone (the server carrying the call stopped; the
   * next join goes to another).
   */
  soon(spread = 200) {
    clearTimeout(this.#timer);
    this.#attempt += 1;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.run();
    }, Math.random() * spread);
  }

  succeeded() {
    this.#attempt = 0;
  }

  cancel() {
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#attempt = 0;
  }
}

/** Reasons of `media_ended` after which joining again may work. */
/**
 * The SFU probes a subscriber's downlink before sending it a higher simulcast layer, with
 * packets on a track of their own (stream "probe", SSRC 0x7072_6F62: sfu's
 * `engine/endpoint/probe.rs`); nothing on it is media, so it is never shown or counted.
 */
export const PROBE_STREAM = 'probe';
export const PROBE_SSRC = 0x7072_6f62;

export const RETRYABLE_END_REASONS = new Set(['node_lost', 'node_moved', 'connection_failed']);

/** Reasons after which the call moves to another media server at once. */
export const MOVED_END_REASONS = new Set(['node_lost', 'node_moved']);

/** The server messages this module consumes. */
const MEDIA_MESSAGES = new Set([
  'media_joined',
  'publish_answer',
  'subscriber_offer',
  'ice_candidate',
  'media_connection',
  'media_ended',
  'peer_media_state',
  'publish_renegotiate',
  'publish_layers',
  'media_resumed',
  'ice_servers',
  'media_link',
  'subscriber_answer_applied',
]);

/**
 * How long a subscriber answer waits for the SFU's `subscriber_answer_applied` before it
 * is applied here all the same (a refused answer is answered by an error instead).
 */
const ANSWER_APPLIED_WAIT_MS = 3000;

/**
 * When the earliest TURN credential a connection gathers with expires, in seconds since
 * the epoch (a TURN REST user name is `EXPIRY:ID`), or null if it has none.
 */
function credentialExpiry(pc) {
  let earliest = null;
  for (const server of pc.getConfiguration().iceServers || []) {
    const expiry = Number(/^(\d+):/.exec(server.username || '')?.[1]);
    if (expiry && (earliest === null || expiry < earliest)) earliest = expiry;
  }
  return earliest;
}

/** A connection 'disconnected' this long (ms) has its ICE restarted. */
const DISCONNECTED_GRACE_MS = 1_000;
/** Nothing received from the SFU on either connection for this long (ms): the path is
 * taken as lost and ICE restarted (browsers say 'disconnected' only after several seconds
 * more). While this page sends, the SFU's congestion control feedback comes about every
 * 100 ms, so a shorter silence says as much; otherwise its sender reports come once a
 * second per stream. */
const SILENCE_MS = 1_500;
const SILENCE_WHILE_SENDING_MS = 1_000;
const SILENCE_POLL_MS = 250;
/** How long (ms) one ICE restart may take before the next, and how many are tried before
 * the session ends (retryable: the page joins the media again). */
const RESTART_TIMEOUT_MS = 8_000;
const RESTART_ATTEMPTS = 2;
/** How long (ms) a session whose websocket dropped waits for it to come back (the server
 * keeps it 15 s). */
const RESUME_WAIT_MS = 12_000;

/** What someone who has never said sends: microphone and camera on. */
export const DEFAULT_PEER_STATE = Object.freeze({ audio: true, video: true, screen: false });

const LEGS = ['publisher', 'subscriber'];

/**
 * Video goes to the SFU as simulcast: the camera at half its resolution (rid `h`) and at
 * full resolution (`f`). The SFU gives each person the layer their downlink can take, so
 * one weak link no longer lowers the picture for everyone else; the browser stops the full
 * layer by itself when its own uplink cannot carry both.
 *
 * Each layer without temporal layers (`L1T1`), as a direct call's one stream: every frame
 * is a reference, so a packet lost on the way waits for its repair (the SFU writes a
 * playout delay that covers it) instead of its frame being skipped. Chromium's default for
 * simulcast VP8, three temporal layers, lost about a frame a second to 5 % loss on a
 * subscriber's downlink (19.1 fps, 20 in a direct call) and 1–2 a second at 20 %; without
 * them, none (load-tests/REPORT.md, session 21).
 */
export const VIDEO_ENCODINGS = Object.freeze([
  Object.freeze({ rid: 'h', scaleResolutionDownBy: 2, scalabilityMode: 'L1T1' }),
  Object.freeze({ rid: 'f', scalabilityMode: 'L1T1' }),
]);
// What a layer the SFU pauses (`publish_layers`) sends instead: a thumbnail, a safety net
// the SFU can switch its subscriber to at once, costing the publisher little (the SFU
// counts on this rate: bwe::THUMBNAIL_BPS). Never off: Chromium starts its full layer
// only once the lower ones have their rate.
const THUMBNAIL = Object.freeze({ scaleResolutionDownBy: 4, maxBitrate: 60_000 });

export class MediaSession {
  // The states a session goes through, reported to onState({state, ...}):
  //   idle       nothing joined (initially, and after leave() or close())
  //   joining    join_media sent, waiting for media_joined
  //   connecting peer connections exist; media not flowing yet
  //   connected  the publisher connection reached the SFU (media_connection or its own state)
  //   reconnecting  a connection to the SFU was lost, or the network changed: ICE is being
  //              restarted on both connections (same session, same consultation); back to
  //              connected when both are up, or ended (connection_failed, retryable) if
  //              RESTART_ATTEMPTS restarts did not bring them back
  //   ended      the server ended the session (media_ended), or a local WebRTC step
  //              failed (reason connection_failed); `retryable`: joining again may help
  //   failed     the server refused join_media (`error` is the server's error message)
  #state = 'idle';
  #consultation = null;
  #pcs = null; // {publisher, subscriber} while a session exists
  #pendingRemote = null; // per leg: candidates received before the remote description
  #pendingLocal = null; // per leg: our candidates gathered before our SDP was sent
  #sdpSent = null; // per leg: whether our offer (publisher) / first answer (subscriber) went out
  #subscriberQueue = Promise.resolve(); // serialises subscriber offers
  #answerApplied = null; // resolves when the SFU says it applied our subscriber answer
  #remote = new Map(); // stream id -> {stream, tracks: Set<track id>}
  #serverConnected = false;
  #marks = {}; // when each leg first connected (performance.now(), ms since the page opened)
  #localState = null; // {audio, video, screen}: what this page says it sends
  #sentState = null; // ... as last sent in this session (a new session sends it again)
  #peers = new Map(); // stream id -> {audio, video, screen} of the others, this session
  #reofferWanted = false; // publish_renegotiate came while an offer was out: offer again after
  #restart = null; // {attempt, timer}: an ICE restart under way
  #lostTimer = null; // a connection went 'disconnected': restart if it stays so
  #restartWanted = false; // a restart came while the publisher's offer was out
  #silence = null; // {timer, bytes, since, sent, sentAt}: watches what comes from the SFU
  #suspended = null; // the websocket dropped: {timer} until it is back (then resume())
  #resuming = false; // resume_media sent, its answer awaited
  #receiveVideo = true; // whether the SFU should send this page the others' video
  #link = null; // {downKbps, rttMs, lossPct, at}: the SFU's last figures for our downlink
  #pausedLayers = []; // rids of our video the SFU asked to send as thumbnails (publish_layers)
  #layersChange = Promise.resolve(); // the last of those changes, settled when made

  /**
   * @param {object} o
   * @param {(msg: object) => void} o.send  sends one message on the websocket
   * @param {MediaStream} o.localStream  camera and microphone (may have no tracks)
   * @param {(stream: MediaStream) => void} [o.onRemoteStream]  a participant appeared
   * @param {(stream: MediaStream) => void} [o.onRemoteStreamRemoved]  ... and went
   * @param {(s: {state: string, consultation: string|null, reason?: string,
   *              retryable?: boolean, error?: object}) => void} [o.onState]
   * @param {(streamId: string, s: {audio: boolean, video: boolean, screen: boolean}) => void}
   *        [o.onPeerState]  another participant's media state (new or changed)
   */
  constructor({ send, localStream, onRemoteStream, onRemoteStreamRemoved, onState, onPeerState }) {
    this.send = send;
    this.localStream = localStream;
    this.onRemoteStream = onRemoteStream || (() => {});
    this.onRemoteStreamRemoved = onRemoteStreamRemoved || (() => {});
    this.onState = onState || (() => {});
    this.onPeerState = onPeerState || (() => {});
    // A new network (Wi-Fi to mobile data, a VPN coming up): the old path may be gone.
    const onNetworkChange = () => this.restartIce();
    globalThis.addEventListener?.('online', onNetworkChange);
    globalThis.navigator?.connection?.addEventListener?.('change', onNetworkChange);
  }

  /**
   * What this page sends now: `audio` the microphone is on (not muted), `video` a picture
   * goes out (camera or screen), `screen` that picture is a shared screen. Sent to the
   * others now if a session exists (and changed), and after every media_joined.
   */
  setLocalState({ audio, video, screen = false }) {
    this.#localState = { audio: !!audio, video: !!video, screen: !!video && !!screen };
    this.#sendState();
  }

  /**
   * Whether the SFU sends this page the others' video (true) or only their sound. Sent
   * now if a session exists, and after every media_joined.
   */
  setReceiveVideo(on) {
    if (this.#receiveVideo === !!on) return;
    this.#receiveVideo = !!on;
    if (this.#pcs) this.send({ type: 'receive_video', on: this.#receiveVideo });
  }

  get receiveVideo() {
    return this.#receiveVideo;
  }

  /** The SFU's last figures for this page's downlink ({downKbps, rttMs, lossPct, at}), or null. */
  get link() {
    return this.#link ? { ...this.#link } : null;
  }

  /** Whether anyone else in the call sends a picture now (as far as this page was told). */
  anyPeerVideo() {
    for (const id of this.#remote.keys()) if (this.peerState(id).video) return true;
    return false;
  }

  /** The last state given to setLocalState, or null. */
  get localState() {
    return this.#localState ? { ...this.#localState } : null;
  }

  /** What the participant whose tracks arrive in stream `streamId` sends, as last told. */
  peerState(streamId) {
    return { ...(this.#peers.get(streamId) ?? DEFAULT_PEER_STATE) };
  }

  get state() {
    return this.#state;
  }

  /** The consultation joined or being joined, or null. */
  get consultation() {
    return this.#state === 'idle' ? null : this.#consultation;
  }

  /** Whether a session is under way (joining, connecting or connected). */
  get active() {
    return ['joining', 'connecting', 'connected', 'reconnecting'].includes(this.#state);
  }

  /** Whether the session waits for its websocket (suspend() until resume() is answered). */
  get suspended() {
    return !!this.#suspended || this.#resuming;
  }

  /**
   * The websocket dropped (a new network, a lost link): the connections are kept while
   * the page reconnects, and resume() takes the session back on the new websocket. A
   * session not yet connecting has nothing to keep: it closes.
   */
  suspend() {
    if (!this.#pcs || !['connecting', 'connected', 'reconnecting'].includes(this.#state)) {
      this.close();
      return;
    }
    if (this.#suspended) return;
    const pcs = this.#pcs;
    if (this.#restart) clearTimeout(this.#restart.timer);
    this.#restart = null;
    this.#resuming = false;
    this.#suspended = {
      timer: setTimeout(() => this.#fail(pcs, 'resume', new Error('the connection to the server did not come back')), RESUME_WAIT_MS),
    };
    if (this.#state !== 'reconnecting') this.#setState('reconnecting');
  }

  /** The websocket is back (after `welcome`): asks the server for the suspended session. */
  resume() {
    if (!this.#suspended) return;
    this.#resuming = true;
    this.send({ type: 'resume_media', consultation: this.#consultation });
  }

  /**
   * Restarts ICE on both connections (the network changed, or a connection was lost):
   * the publisher's is offered again with new credentials, and the SFU is asked to offer
   * the subscriber's so. Media goes on over the old path while it still works.
   */
  restartIce() {
    const pcs = this.#pcs;
    if (!pcs || !['connecting', 'connected', 'reconnecting'].includes(this.#state) || this.suspended) return;
    clearTimeout(this.#lostTimer);
    this.#lostTimer = null;
    if (this.#restart) clearTimeout(this.#restart.timer);
    const attempt = (this.#restart?.attempt ?? 0) + 1;
    if (attempt > RESTART_ATTEMPTS) {
      this.#fail(pcs, 'ICE restart', new Error(`no connection after ${RESTART_ATTEMPTS} ICE restarts`));
      return;
    }
    const timer = setTimeout(() => this.#pcs === pcs && this.restartIce(), RESTART_TIMEOUT_MS);
    this.#restart = { attempt, timer, at: performance.now() };
    this.#marks.restarted = performance.now();
    if (this.#state !== 'reconnecting') this.#setState('reconnecting');
    // The server answers with fresh ICE servers (a TURN credential minted now: the first
    // one may have expired in a long call); the publisher is offered again once they are
    // set, so that its new gathering uses them. A lost answer is covered by the timer.
    this.send({ type: 'restart_ice' });
  }

  /** ice_servers (the answer to restart_ice): gather with them from now on, then offer. */
  #restartWith(iceServers) {
    const pcs = this.#pcs;
    if (!pcs || !this.#restart) return;
    for (const leg of LEGS) {
      try {
        pcs[leg].setConfiguration({ ...pcs[leg].getConfiguration(), iceServers });
      } catch (e) {
        // Refused servers leave the old ones in place; the restart goes on with them.
        console.warn(`new ICE servers refused (${leg})`, e);
      }
    }
    this.#offerPublisher(pcs, { iceRestart: true });
  }

  /**
   * Asks to join the media of a consultation. A current session is closed here; the
   * server leaves it by itself when it gets the new join_media.
   */
  join(consultation) {
    this.#teardown();
    this.#consultation = consultation;
    this.#setState('joining');
    this.send({ type: 'join_media', consultation });
  }

  /** Leaves the media session (the visit or consultation itself goes on). */
  leave() {
    if (this.active) this.send({ type: 'leave_media' });
    this.close();
  }

  /**
   * Ends the session locally without telling the server, e.g. because the websocket
   * closed (the server ends the media session of a closed connection itself).
   */
  close() {
    this.#teardown();
    if (this.#state !== 'idle') this.#setState('idle');
  }

  /**
   * Takes a server message if it belongs to the media session. Returns true if it was
   * consumed (including stale media messages of a session already left), false if the
   * page should handle it.
   */
  handle(msg) {
    if (msg.type === 'error' && this.#resuming && msg.req == null) {
      // The server kept no session to resume (gone, or too late): join again.
      const pcs = this.#pcs;
      this.#resuming = false;
      this.#fail(pcs, 'resume', new Error(msg.message || 'no media session to resume'));
      return true;
    }
    if (msg.type === 'error') {
      // An error without `req` while joining is the answer to join_media.
      if (this.#state !== 'joining' || msg.req != null) return false;
      this.#teardown();
      this.#setState('failed', { error: { code: msg.code, message: msg.message } });
      return true;
    }
    if (!MEDIA_MESSAGES.has(msg.type)) return false;
    switch (msg.type) {
      case 'media_joined':
        if (this.#state === 'joining' && msg.consultation === this.#consultation) {
          this.#start(msg.ice_servers || []);
        }
        break;
      case 'publish_answer':
        if (this.#pcs) this.#applyPublishAnswer(msg.sdp);
        break;
      case 'media_resumed':
        if (this.#resuming && msg.consultation === this.#consultation) {
          this.#resuming = false;
          clearTimeout(this.#suspended?.timer);
          this.#suspended = null;
          this.#afterResume();
        }
        break;
      case 'ice_servers':
        this.#restartWith(msg.ice_servers || []);
        break;
      case 'publish_renegotiate':
        if (this.#pcs) this.#offerPublisher(this.#pcs);
        break;
      case 'publish_layers':
        if (this.#pcs && typeof msg.mid === 'string' && Array.isArray(msg.paused)) {
          // One change at a time, in the order asked: each reads the parameters the last
          // one set.
          const pcs = this.#pcs;
          this.#layersChange = this.#layersChange.then(() => this.#pauseLayers(pcs, msg.mid, msg.paused)).catch(() => {});
        }
        break;
      case 'subscriber_offer':
        if (this.#pcs) {
          const pcs = this.#pcs;
          this.#subscriberQueue = this.#subscriberQueue
            .then(() => this.#answerSubscriberOffer(pcs, msg.sdp))
            .catch((e) => this.#fail(pcs, 'subscriber offer', e));
        }
        break;
      case 'subscriber_answer_applied':
        this.#answerApplied?.();
        break;
      case 'ice_candidate':
        if (this.#pcs && LEGS.includes(msg.leg)) this.#addRemoteCandidate(msg.leg, msg.candidate);
        break;
      case 'media_connection':
        if (this.#pcs) {
          this.#serverConnected = !!msg.connected;
          this.#updateConnected();
        }
        break;
      case 'peer_media_state':
        if (this.#pcs && typeof msg.stream === 'string') {
          const state = { audio: msg.audio !== false, video: msg.video !== false, screen: msg.screen === true };
          this.#peers.set(msg.stream, state);
          this.onPeerState(msg.stream, { ...state });
        }
        break;
      case 'media_link':
        if (this.#pcs) {
          this.#link = { downKbps: msg.down_kbps, rttMs: msg.rtt_ms, lossPct: msg.loss_pct, at: performance.now() };
        }
        break;
      case 'media_ended':
        // `left` only ever answers our own leave_media, and that session is gone already
        // (a new one may be starting): nothing to do.
        if (msg.reason !== 'left' && this.#state !== 'idle') {
          this.#teardown();
          this.#setState('ended', {
            reason: msg.reason,
            retryable: RETRYABLE_END_REASONS.has(msg.reason),
          });
        }
        break;
    }
    return true;
  }

  /**
   * Figures from getStats(), summed over the subscriber connection's inbound-rtp reports
   * (what this browser receives) and the publisher connection's outbound-rtp reports
   * (what it sends), with both connections' states.
   */
  /**
   * Sends `track` (or nothing, with null) as this session's audio or video from now on,
   * in place of what it sent: a screen instead of the camera, another microphone. No
   * renegotiation; the others simply see the new picture. Returns whether it was done
   * (false when no session is connected yet; the next join uses `localStream`).
   */
  async replaceTrack(kind, track) {
    const sender = this.#pcs?.publisher
      .getTransceivers()
      .find((t) => t.receiver.track.kind === kind)?.sender;
    if (!sender) return false;
    await sender.replaceTrack(track);
    return true;
  }

  /**
   * Sends the simulcast layers (by rid) in `paused` of the video in media section `mid` as
   * thumbnails and the others as set up, as the SFU asks (`publish_layers`); never all.
   */
  async #pauseLayers(pcs, mid, paused) {
    const sender = pcs.publisher.getTransceivers().find((t) => t.mid === mid)?.sender;
    if (!sender) return;
    // The sender's parameters with each layer as wanted; null if nothing changes.
    const wanted = () => {
      const params = sender.getParameters();
      const encodings = params.encodings || [];
      if (!encodings.some((e) => e.rid) || encodings.every((e) => paused.includes(e.rid))) return null;
      let changed = false;
      for (const e of encodings) {
        const want = paused.includes(e.rid) ? THUMBNAIL : VIDEO_ENCODINGS.find((x) => x.rid === e.rid) || {};
        const scale = want.scaleResolutionDownBy ?? 1;
        if ((e.scaleResolutionDownBy ?? 1) !== scale || e.maxBitrate !== want.maxBitrate) {
          e.scaleResolutionDownBy = scale;
          if (want.maxBitrate === undefined) delete e.maxBitrate;
          else e.maxBitrate = want.maxBitrate;
          changed = true;
        }
      }
      this.#pausedLayers = encodings.filter((e) => paused.includes(e.rid)).map((e) => e.rid);
      return changed ? params : null;
    };
    const params = wanted();
    if (!params) return;
    // With its lower layers paused, the full layer keeps its resolution when the SFU asks
    // for less (a direct call's one stream does); Chromium would otherwise scale it down
    // for a minute.
    params.degradationPreference = paused.length ? 'maintain-resolution' : 'balanced';
    try {
      await sender.setParameters(params);
    } catch {
      // A browser that refuses the preference: the layers alone.
      const again = wanted();
      if (again) await sender.setParameters(again).catch((e) => console.warn(`simulcast layers of media section ${mid}: ${e.message}`));
    }
  }

  /**
   * How this session's media reaches the SFU now, from the publisher connection's selected
   * candidate pair (media-path.js): 'udp', 'tcp', 'turn_udp', 'turn_tcp', 'turn_tls', or
   * null while none is selected.
   */
  async path() {
    const pc = this.#pcs?.publisher;
    return pc ? pathOf(await pc.getStats()) : null;
  }

  async stats() {
    const out = {
      state: this.#state,
      consultation: this.consultation,
      remoteStreams: this.#remote.size,
      publisher: connectionStates(this.#pcs?.publisher),
      subscriber: connectionStates(this.#pcs?.subscriber),
      inboundVideo: {
        tracks: 0, packetsReceived: 0, bytesReceived: 0, packetsLost: 0,
        framesReceived: 0, framesDecoded: 0, keyFramesDecoded: 0, pliCount: 0, nackCount: 0,
        freezeCount: 0, totalFreezesDuration: 0,
      },
      inboundAudio: {
        tracks: 0, packetsReceived: 0, bytesReceived: 0, packetsLost: 0, concealedSamples: 0, totalSamplesReceived: 0,
      },
      // The round trip to the SFU on the publisher connection (ms; 0: not measured yet).
      roundTripMs: 0,
      // How long this session has lasted (ms; 0 before media_joined).
      sessionMs: this.#marks.joined ? performance.now() - this.#marks.joined : 0,
      outboundVideo: { tracks: 0, packetsSent: 0, bytesSent: 0, framesEncoded: 0, codec: null },
      outboundAudio: { tracks: 0, packetsSent: 0, bytesSent: 0 },
      // The browser's send-side bandwidth estimate towards the SFU (bit/s): it grows
      // only with the SFU's transport-wide congestion control feedback.
      availableOutgoingBitrate: 0,
      // When this session's media_joined arrived and each leg first connected, in ms
      // since the page opened: the join's phases, for diagnostics and the join-time test.
      marks: { ...this.#marks },
      // The track each publisher sender sends now (null: nothing is sent).
      senders: { audio: null, video: null },
      // The simulcast layers (rids) of its video that the SFU asked it to pause.
      pausedLayers: [...this.#pausedLayers],
      // Per other participant (by the id of the stream their tracks arrive in): video
      // frames decoded and in which codec, audio packets received.
      byStream: {},
      // Per connection, when its TURN credential expires (s since the epoch; null: none).
      credentialExpires: { publisher: null, subscriber: null },
    };
    if (!this.#pcs) return out;
    for (const leg of LEGS) out.credentialExpires[leg] = credentialExpiry(this.#pcs[leg]);
    for (const t of this.#pcs.publisher.getTransceivers()) {
      const kind = t.receiver.track.kind;
      const track = t.sender.track;
      if (kind in out.senders && track) out.senders[kind] = { enabled: track.enabled, readyState: track.readyState };
    }
    const [sub, pub] = await Promise.all([
      this.#pcs.subscriber.getStats(),
      this.#pcs.publisher.getStats(),
    ]);
    const streamOf = new Map();
    for (const [id, { stream }] of this.#remote) for (const t of stream.getTracks()) streamOf.set(t.id, id);
    sub.forEach((r) => {
      if (r.type !== 'inbound-rtp' || r.ssrc === PROBE_SSRC) return;
      const sum = r.kind === 'video' ? out.inboundVideo : r.kind === 'audio' ? out.inboundAudio : null;
      if (sum) addInto(sum, r);
      const id = streamOf.get(r.trackIdentifier);
      if (!id) return;
      const s = (out.byStream[id] ??= { framesDecoded: 0, videoCodec: null, audioPacketsReceived: 0 });
      if (r.kind === 'video') {
        s.framesDecoded += r.framesDecoded || 0;
        s.videoCodec = sub.get(r.codecId)?.mimeType ?? s.videoCodec;
      } else if (r.kind === 'audio') {
        s.audioPacketsReceived += r.packetsReceived || 0;
      }
    });
    pub.forEach((r) => {
      if (r.type === 'candidate-pair' && r.nominated && r.availableOutgoingBitrate) {
        out.availableOutgoingBitrate = r.availableOutgoingBitrate;
      }
      if (r.type === 'candidate-pair' && r.nominated && r.currentRoundTripTime) {
        out.roundTripMs = Math.round(r.currentRoundTripTime * 1000);
      }
      if (r.type !== 'outbound-rtp') return;
      const sum = r.kind === 'video' ? out.outboundVideo : r.kind === 'audio' ? out.outboundAudio : null;
      if (sum) addInto(sum, r);
      if (r.kind === 'video' && r.codecId) out.outboundVideo.codec = pub.get(r.codecId)?.mimeType ?? null;
    });
    out.paths = { publisher: selectedPath(pub), subscriber: selectedPath(sub) };
    return out;
  }

  // --- internals ------------------------------------------------------------------------

  #setState(state, extra = {}) {
    this.#state = state;
    this.onState({ state, consultation: this.#consultation, ...extra });
  }

  /** media_joined: creates both connections and sends the publisher's offer. */
  #start(iceServers) {
    // The default bundle policy: `max-bundle` would refuse an offer without a BUNDLE
    // group, such as the SFU's first subscriber offer while nobody else publishes.
    const config = { iceServers };
    const pcs = { publisher: new RTCPeerConnection(config), subscriber: new RTCPeerConnection(config) };
    this.#pcs = pcs;
    this.#pendingRemote = { publisher: [], subscriber: [] };
    this.#pendingLocal = { publisher: [], subscriber: [] };
    this.#sdpSent = { publisher: false, subscriber: false };
    this.#serverConnected = false;
    this.#subscriberQueue = Promise.resolve();
    this.#marks = { joined: performance.now() };
    this.#peers.clear();
    this.#sentState = null;
    this.#sendState(); // every (re)join: the others learn what this page sends
    this.#link = null;
    if (!this.#receiveVideo) this.send({ type: 'receive_video', on: false });

    for (const leg of LEGS) {
      pcs[leg].onicecandidate = (e) => {
        // A null candidate only says gathering is complete; nothing to send.
        if (this.#pcs !== pcs || !e.candidate) return;
        const msg = { type: 'ice_candidate', leg, candidate: e.candidate.toJSON() };
        if (this.#sdpSent[leg]) this.send(msg);
        else this.#pendingLocal[leg].push(msg);
      };
      pcs[leg].onconnectionstatechange = () => {
        if (this.#pcs !== pcs) return;
        if (pcs[leg].connectionState === 'connected') this.#marks[`${leg}Connected`] ??= performance.now();
        this.#watchPath(pcs);
        this.#updateConnected();
      };
    }
    pcs.subscriber.ontrack = (e) => this.#addRemoteTrack(e);
    this.#setState('connecting');

    // One audio and one video sender, whether or not there is a track for it now: a
    // camera turned on later, or a screen shared instead of it, takes its place with
    // replaceTrack() and no renegotiation.
    const streams = this.localStream ? [this.localStream] : [];
    for (const kind of ['audio', 'video']) {
      const track = this.localStream?.getTracks().find((t) => t.kind === kind);
      const init = { direction: 'sendonly', streams };
      if (kind === 'video') {
        init.sendEncodings = VIDEO_ENCODINGS.map((e) => ({ ...e }));
        this.#pausedLayers = [];
      }
      try {
        pcs.publisher.addTransceiver(track || kind, init);
      } catch (e) {
        // A browser that refuses a layer's scalability mode (not seen; Safari is not
        // testable here) sends its own default rather than no video.
        if (!init.sendEncodings) throw e;
        init.sendEncodings = init.sendEncodings.map(({ scalabilityMode, ...rest }) => rest);
        pcs.publisher.addTransceiver(track || kind, init);
      }
    }
    this.#reofferWanted = false;
    this.#restartWanted = false;
    this.#offerPublisher(pcs);
    this.#silence = { timer: setInterval(() => this.#checkSilence(pcs), SILENCE_POLL_MS), bytes: -1, since: 0, sent: -1, sentAt: -Infinity };
  }

  /**
   * While the subscriber connection receives tracks, the SFU sends to this page all the
   * time (media and RTCP on it, RTCP feedback on the publisher's while this page sends):
   * bytes that stop coming on both for SILENCE_MS (SILENCE_WHILE_SENDING_MS while this
   * page sends) mean the path is gone.
   */
  async #checkSilence(pcs) {
    const w = this.#silence;
    if (this.#pcs !== pcs || !w || !['connected', 'reconnecting'].includes(this.#state)) return;
    if (!receivingAny(pcs.subscriber)) return;
    // Whatever the SFU sends on either connection: the publisher's gets its feedback
    // (RTCP) while this page sends, so the path is known alive even when the others'
    // media stops (their own path was cut): restarting here would not bring it back.
    const reports = await Promise.all(LEGS.map((leg) => pcs[leg].getStats()));
    if (this.#pcs !== pcs) return;
    const bytes = reports.reduce((sum, r) => sum + (selectedPair(r)?.bytesReceived ?? 0), 0);
    const sent = selectedPair(reports[0])?.bytesSent ?? 0;
    const now = performance.now();
    const flowing = bytes !== w.bytes;
    if (flowing) {
      w.bytes = bytes;
      w.since = now;
    }
    if (sent !== w.sent) {
      w.sent = sent;
      w.sentAt = now;
    }
    const limit = now - w.sentAt < SILENCE_MS ? SILENCE_WHILE_SENDING_MS : SILENCE_MS;
    if (this.#restart) {
      // Restarted: over once both connections are up and bytes arrive again.
      if (flowing && now - this.#restart.at > SILENCE_POLL_MS && LEGS.every((leg) => pcs[leg].connectionState === 'connected')) {
        this.#recovered();
      }
    } else if (now - w.since >= limit) {
      w.since = now;
      this.restartIce();
    }
  }

  /**
   * The session is back on a new websocket. An offer sent on the old one may never have
   * arrived: it is taken back. Then both connections find their (perhaps new) path.
   */
  async #afterResume() {
    const pcs = this.#pcs;
    try {
      if (pcs.publisher.signalingState === 'have-local-offer') {
        await pcs.publisher.setLocalDescription({ type: 'rollback' });
      }
    } catch (e) {
      console.warn('media: could not take back the publisher offer', e);
    }
    if (this.#pcs !== pcs) return;
    this.#reofferWanted = false;
    this.#restartWanted = false;
    this.restartIce();
  }

  /** An ICE restart brought both connections back. */
  #recovered() {
    clearTimeout(this.#restart.timer);
    this.#restart = null;
    this.#marks.recovered = performance.now();
    this.#updateConnected();
  }

  /**
   * A connection that failed has ICE restarted at once; one 'disconnected' for longer than
   * DISCONNECTED_GRACE_MS too (a brief gap heals by itself).
   */
  #watchPath(pcs) {
    if (LEGS.every((leg) => pcs[leg].connectionState === 'connected')) {
      clearTimeout(this.#lostTimer);
      this.#lostTimer = null;
      // With tracks coming in, the silence check sees the bytes come back (#checkSilence).
      if (this.#restart && !receivingAny(pcs.subscriber)) this.#recovered();
      return;
    }
    // A connection that never connected yet is still being set up, not lost.
    const lost = LEGS.filter((leg) => this.#marks[`${leg}Connected`] && pcs[leg].connectionState !== 'connected');
    if (lost.some((leg) => pcs[leg].connectionState === 'failed')) {
      if (!this.#restart) this.restartIce();
    } else if (lost.length && !this.#restart && !this.#lostTimer) {
      this.#lostTimer = setTimeout(() => {
        this.#lostTimer = null;
        if (this.#pcs === pcs && !this.#restart) this.restartIce();
      }, DISCONNECTED_GRACE_MS);
    }
  }

  /**
   * Offers the publisher connection (first, or again when the SFU asks): one offer at a
   * time; a request while one is out is taken up once its answer is applied.
   */
  async #offerPublisher(pcs, options = {}) {
    if (pcs.publisher.signalingState !== 'stable') {
      this.#reofferWanted = true;
      if (options.iceRestart) this.#restartWanted = true;
      return;
    }
    try {
      const offer = await pcs.publisher.createOffer(options);
      await pcs.publisher.setLocalDescription(offer);
      if (this.#pcs !== pcs) return;
      this.send({ type: 'publish_offer', sdp: pcs.publisher.localDescription.sdp });
      if (!this.#sdpSent.publisher) this.#flushLocal('publisher');
    } catch (e) {
      this.#fail(pcs, 'publish offer', e);
    }
  }

  async #applyPublishAnswer(sdp) {
    const pcs = this.#pcs;
    try {
      await pcs.publisher.setRemoteDescription({ type: 'answer', sdp });
      if (this.#pcs !== pcs) return;
      await this.#flushRemote('publisher');
      if (this.#reofferWanted) {
        this.#reofferWanted = false;
        this.#offerPublisher(pcs, { iceRestart: this.#restartWanted });
        this.#restartWanted = false;
      }
    } catch (e) {
      this.#fail(pcs, 'publish answer', e);
    }
  }

  async #answerSubscriberOffer(pcs, sdp) {
    if (this.#pcs !== pcs) return;
    const pc = pcs.subscriber;
    await pc.setRemoteDescription({ type: 'offer', sdp });
    await this.#flushRemote('subscriber');
    const answer = await pc.createAnswer();
    if (this.#pcs !== pcs) return;
    // The SFU gets the answer before this browser applies it, which is when the browser
    // starts checking the path: checked before the SFU has the answer, the path is
    // answered late, and Chrome then nominates it only at its slow ping interval (up to
    // 2.5 s more to connect). One signalling round trip instead.
    const applied = new Promise((resolve) => {
      const timer = setTimeout(resolve, ANSWER_APPLIED_WAIT_MS);
      this.#answerApplied = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.send({ type: 'subscriber_answer', sdp: answer.sdp });
    await applied;
    this.#answerApplied = null;
    if (this.#pcs !== pcs) return;
    await pc.setLocalDescription(answer);
    if (this.#pcs !== pcs) return;
    this.#flushLocal('subscriber');
    this.#sweepRemoteStreams();
  }

  /** Sends the candidates gathered before this leg's SDP went out. */
  #flushLocal(leg) {
    this.#sdpSent[leg] = true;
    const queued = this.#pendingLocal[leg];
    this.#pendingLocal[leg] = [];
    for (const msg of queued) this.send(msg);
  }

  async #addRemoteCandidate(leg, candidate) {
    const pc = this.#pcs?.[leg];
    if (!pc) return;
    if (!pc.remoteDescription) {
      this.#pendingRemote[leg].push(candidate);
      return;
    }
    try {
      await pc.addIceCandidate(candidate);
    } catch (e) {
      console.warn(`media: ignoring a ${leg} ICE candidate the browser refused:`, e);
    }
  }

  async #flushRemote(leg) {
    const queued = this.#pendingRemote[leg];
    this.#pendingRemote[leg] = [];
    for (const c of queued) await this.#addRemoteCandidate(leg, c);
  }

  /** Sends the local state if a session exists and it differs from what was last sent. */
  #sendState() {
    const s = this.#localState;
    if (!s || !this.#pcs) return;
    const last = this.#sentState;
    if (last && last.audio === s.audio && last.video === s.video && last.screen === s.screen) return;
    this.#sentState = { ...s };
    this.send({ type: 'media_state', ...s });
  }

  #updateConnected() {
    if (!this.#pcs || !['connecting', 'connected', 'reconnecting'].includes(this.#state)) return;
    if (this.#restart) return; // back to connected when both connections are (#watchPath)
    const connected = this.#serverConnected || this.#pcs.publisher.connectionState === 'connected';
    const next = connected ? 'connected' : 'connecting';
    if (next !== this.#state) this.#setState(next);
  }

  /** subscriber `track`: one MediaStream per remote participant. */
  #addRemoteTrack(e) {
    const stream = e.streams[0] || new MediaStream([e.track]);
    // The SFU's probe track carries no media: never shown.
    if (stream.id === PROBE_STREAM) return;
    let entry = this.#remote.get(stream.id);
    const isNew = !entry;
    if (isNew) {
      entry = { stream, tracks: new Set() };
      this.#remote.set(stream.id, entry);
      // Renegotiation removes a participant's tracks from their stream.
      stream.addEventListener('removetrack', () => this.#sweepRemoteStreams());
    }
    entry.tracks.add(e.track.id);
    e.track.addEventListener('ended', () => this.#sweepRemoteStreams());
    if (isNew) this.onRemoteStream(stream);
  }

  /** Drops the remote streams none of whose tracks is still being received. */
  #sweepRemoteStreams() {
    if (!this.#pcs) return;
    const receiving = new Set();
    for (const t of this.#pcs.subscriber.getTransceivers()) {
      const dir = t.currentDirection;
      if ((dir === 'recvonly' || dir === 'sendrecv') && t.receiver.track.readyState === 'live') {
        receiving.add(t.receiver.track.id);
      }
    }
    for (const [id, entry] of this.#remote) {
      const inStream = new Set(entry.stream.getTracks().map((t) => t.id));
      const alive = [...entry.tracks].some((t) => receiving.has(t) && inStream.has(t));
      if (!alive) {
        this.#remote.delete(id);
        this.onRemoteStreamRemoved(entry.stream);
      }
    }
  }

  /** A local WebRTC failure: the session cannot go on; say so as connection_failed. */
  #fail(pcs, what, e) {
    if (this.#pcs !== pcs) return; // a late failure of connections already closed
    console.error(`media: ${what} failed:`, e);
    if (this.active) this.send({ type: 'leave_media' });
    this.#teardown();
    this.#setState('ended', { reason: 'connection_failed', retryable: true, error: { message: String(e) } });
  }

  #teardown() {
    clearTimeout(this.#suspended?.timer);
    this.#suspended = null;
    this.#resuming = false;
    if (this.#silence) clearInterval(this.#silence.timer);
    this.#silence = null;
    clearTimeout(this.#lostTimer);
    this.#lostTimer = null;
    if (this.#restart) clearTimeout(this.#restart.timer);
    this.#restart = null;
    if (this.#pcs) {
      for (const leg of LEGS) {
        const pc = this.#pcs[leg];
        pc.onicecandidate = pc.onconnectionstatechange = pc.ontrack = null;
        pc.close();
      }
      this.#pcs = null;
    }
    for (const { stream } of this.#remote.values()) this.onRemoteStreamRemoved(stream);
    this.#remote.clear();
    this.#peers.clear();
    this.#sentState = null;
    this.#serverConnected = false;
  }
}

function connectionStates(pc) {
  if (!pc) return null;
  return {
    connectionState: pc.connectionState,
    iceConnectionState: pc.iceConnectionState,
    signalingState: pc.signalingState,
  };
}

/**
 * The path a connection's media takes now (its selected candidate pair): this side's
 * address, port and protocol, and the candidate's type (host, srflx, prflx or relay).
 */
function selectedPath(report) {
  const local = report.get(selectedPair(report)?.localCandidateId);
  if (!local) return null;
  return { address: local.address, port: local.port, protocol: local.protocol, type: local.candidateType };
}

/** Whether a connection receives any track. */
function receivingAny(pc) {
  return pc.getTransceivers().some((t) => t.currentDirection === 'recvonly' || t.currentDirection === 'sendrecv');
}

/** Adds a report's numeric fields into the sum's fields of the same name. */
function addInto(sum, report) {
  sum.tracks += 1;
  for (const key of Object.keys(sum)) {
    if (key !== 'tracks' && typeof report[key] === 'number') sum[key] += report[key];
  }
}
