// The connection-quality indicator of a page in a call (the patient's and the
// clinician's), worked out from MediaSession.stats() every two seconds: what arrived since
// the last look (packets, losses, decoded frames), what the browser thinks it can send,
// and what the SFU estimates it can receive (MediaSession.link). It also says when the
// link has stayed too weak for video (VIDEO_FLOOR_KBPS either way for WEAK_FOR_MS), so
// that the page can offer to go on in sound only (sound-only.js).

/** Below this (kbit/s, up or down), video is a slideshow beside the sound: the page
 * offers sound only. */
export const VIDEO_FLOOR_KBPS = 120;
/** How long (ms) the link must stay below the floor before the offer. */
export const WEAK_FOR_MS = 10_000;
/** The SFU's figures are sent every 5 s; older than this they say nothing. */
const LINK_FRESH_MS = 12_000;

/** What each quality level says, in plain English. */
export const QUALITY_TEXT = {
  none: 'Connection: checking',
  good: 'Connection: good',
  fair: 'Connection: fair. The picture may be less sharp.',
  poor: 'Connection: poor. The picture may freeze; sound should carry on.',
};

/**
 * The connection-quality indicator: every 2 s, what arrived since the last look
 * (packets, losses, decoded frames) and what the browser thinks it can send.
 *   good: under 2 % loss and smooth video (or sound only);
 *   fair: under 8 % loss, or little upload bandwidth;
 *   poor: more loss, nothing arriving from the other side, or the media connection down.
 */
export class QualityMonitor {
  #media;
  #onChange;
  #timer = null;
  #prev = null;
  level = 'none';
  figures = { lossPct: null, fps: null, sendKbps: null, downKbps: null, rttMs: null };
  /** Whether the link has stayed too weak for video (see VIDEO_FLOOR_KBPS). */
  videoTooWeak = false;

  #intervalMs;
  #weakForMs;
  #weakSince = null;
  #expectsVideo;
  #sendsVideo;
  #onVideoWeak;

  /**
   * `media`: anything with MediaSession's stats() (and `link`); `onChange(level, was)`.
   * `expectsVideo()`: someone else in the call sends a picture; `sendsVideo()`: this page
   * does; `onVideoWeak(weak)`: the link became too weak for video, or no longer is.
   */
  constructor(media, onChange, { intervalMs = 2000, weakForMs = WEAK_FOR_MS, expectsVideo = () => true, sendsVideo = () => true, onVideoWeak = () => {} } = {}) {
    this.#media = media;
    this.#onChange = onChange;
    this.#intervalMs = intervalMs;
    this.#weakForMs = weakForMs;
    this.#expectsVideo = expectsVideo;
    this.#sendsVideo = sendsVideo;
    this.#onVideoWeak = onVideoWeak;
  }

  start() {
    if (this.#timer) return;
    this.#prev = null;
    this.#timer = setInterval(() => this.#tick().catch(() => {}), this.#intervalMs);
    this.#tick().catch(() => {}); // the first sample: figures follow at the next one
  }

  stop() {
    clearInterval(this.#timer);
    this.#timer = null;
    this.#prev = null;
    this.#weakSince = null;
    this.#setWeak(false);
    this.#set('none');
  }

  async #tick() {
    const s = await this.#media.stats();
    const now = performance.now();
    const cur = {
      at: now,
      received: s.inboundVideo.packetsReceived + s.inboundAudio.packetsReceived,
      lost: s.inboundVideo.packetsLost + s.inboundAudio.packetsLost,
      frames: s.inboundVideo.framesDecoded,
      videoTracks: s.inboundVideo.tracks,
    };
    const prev = this.#prev;
    this.#prev = cur;
    if (!this.#timer) return;
    if (s.state !== 'connected') {
      this.#set(this.level === 'none' ? 'none' : 'poor');
      return;
    }
    const sendKbps = s.availableOutgoingBitrate ? Math.round(s.availableOutgoingBitrate / 1000) : null;
    const link = this.#media.link;
    const fresh = link && now - link.at < LINK_FRESH_MS ? link : null;
    const downKbps = fresh ? fresh.downKbps : null;
    this.#judgeVideo(now, sendKbps, downKbps);
    if (!prev) return;
    const dt = (now - prev.at) / 1000;
    const got = Math.max(0, cur.received - prev.received);
    const lost = Math.max(0, cur.lost - prev.lost);
    const lossPct = got + lost > 0 ? (100 * lost) / (got + lost) : null;
    const fps = cur.videoTracks ? Math.max(0, cur.frames - prev.frames) / dt : null;
    this.figures = {
      lossPct: lossPct == null ? null : Math.round(lossPct * 10) / 10,
      fps: fps == null ? null : Math.round(fps),
      sendKbps,
      downKbps,
      rttMs: fresh ? fresh.rttMs : null,
    };
    let level;
    if (s.remoteStreams > 0 && got === 0) level = 'poor';
    else if (lossPct == null) level = 'good'; // nobody to receive from yet: our side is up
    else if (lossPct < 2 && (fps == null || fps >= 8)) level = 'good';
    else if (lossPct < 8) level = 'fair';
    else level = 'poor';
    // The SFU's downlink estimate follows what it sends: with no video coming (nobody
    // sends one, or this page is in sound only) a low one says nothing of the link.
    for (const kbps of [sendKbps, this.#expectsVideo() ? downKbps : null]) {
      if (kbps != null && kbps < 80) level = 'poor';
      else if (kbps != null && kbps < 150 && level === 'good') level = 'fair';
    }
    this.#set(level);
  }

  /** Too weak for video: the upload or the download under the floor, the whole time. */
  #judgeVideo(now, sendKbps, downKbps) {
    const weakUp = sendKbps != null && sendKbps < VIDEO_FLOOR_KBPS && this.#sendsVideo();
    const weakDown = downKbps != null && downKbps < VIDEO_FLOOR_KBPS && this.#expectsVideo();
    if (!weakUp && !weakDown) {
      this.#weakSince = null;
      this.#setWeak(false);
      return;
    }
    this.#weakSince ??= now;
    if (now - this.#weakSince >= this.#weakForMs) this.#setWeak(true);
  }

  #setWeak(weak) {
    if (weak === this.videoTooWeak) return;
    this.videoTooWeak = weak;
    this.#onVideoWeak(weak);
  }

  #set(level) {
    if (level === this.level) return;
    const was = this.level;
    this.level = level;
    this.#onChange(level, was);
  }
}

/** How often (ms) a page in a call reports its figures for the support desk. */
export const REPORT_EVERY_MS = 10_000;

const clamp = (x, max) => Math.max(0, Math.min(max, Math.round(Number.isFinite(x) ? x : 0)));

/**
 * The call's figures as the server keeps them (`call_quality`, protocol's CallFigures),
 * from MediaSession.stats(): what this media session received and sent since it joined.
 * No media and no names: the path, the round trip, loss, bitrates, freezes, concealed
 * sound and the time in sound only.
 */
export function callFigures(s, { path = null, audioOnlyMs = 0 } = {}) {
  const seconds = s.sessionMs / 1000;
  const v = s.inboundVideo;
  const a = s.inboundAudio;
  const received = v.packetsReceived + a.packetsReceived;
  const lost = v.packetsLost + a.packetsLost;
  const kbps = (bytes) => (seconds > 0 ? (bytes * 8) / seconds / 1000 : 0);
  const figures = {
    seconds: clamp(seconds, 2 ** 32 - 1),
    rtt_ms: clamp(s.roundTripMs, 2 ** 32 - 1),
    loss_permille: clamp(received + lost > 0 ? (1000 * lost) / (received + lost) : 0, 1000),
    recv_kbps: clamp(kbps(v.bytesReceived + a.bytesReceived), 2 ** 32 - 1),
    send_kbps: clamp(kbps(s.outboundVideo.bytesSent + s.outboundAudio.bytesSent), 2 ** 32 - 1),
    freezes: clamp(v.freezeCount, 2 ** 32 - 1),
    freeze_ms: clamp(v.totalFreezesDuration * 1000, 2 ** 32 - 1),
    concealed_permille: clamp(a.totalSamplesReceived > 0 ? (1000 * a.concealedSamples) / a.totalSamplesReceived : 0, 1000),
    audio_only_ms: clamp(audioOnlyMs, 2 ** 32 - 1),
  };
  if (path) figures.path = path;
  return figures;
}

/** Sends `call_quality` every REPORT_EVERY_MS while started (a page in a connected call). */
export class QualityReporter {
  #media;
  #send;
  #extra;
  #timer = null;

  /** `extra()`: {path, audioOnlyMs} now. */
  constructor(media, send, extra, { everyMs = REPORT_EVERY_MS } = {}) {
    this.#media = media;
    this.#send = send;
    this.#extra = extra;
    this.everyMs = everyMs;
  }

  start() {
    if (this.#timer) return;
    this.#timer = setInterval(() => this.report().catch(() => {}), this.everyMs);
  }

  stop() {
    clearInterval(this.#timer);
    this.#timer = null;
  }

  /** One report now (also the last one when a call ends). */
  async report() {
    const s = await this.#media.stats();
    // Only while media flows: a session being torn down has no figures left to give.
    if (!s.sessionMs || !['connected', 'reconnecting'].includes(s.state)) return;
    this.#send({ type: 'call_quality', ...callFigures(s, this.#extra()) });
  }
}
