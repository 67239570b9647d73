// The patient's connection-quality indicator, worked out from MediaSession.stats() every
// two seconds: what arrived since the last look (packets, losses, decoded frames) and what
// the browser thinks it can send.

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
  figures = { lossPct: null, fps: null, sendKbps: null };

  #intervalMs;

  /** `media`: anything with MediaSession's stats(); `onChange(level, was)`. */
  constructor(media, onChange, { intervalMs = 2000 } = {}) {
    this.#media = media;
    this.#onChange = onChange;
    this.#intervalMs = intervalMs;
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
    };
    let level;
    if (s.remoteStreams > 0 && got === 0) level = 'poor';
    else if (lossPct == null) level = 'good'; // nobody to receive from yet: our side is up
    else if (lossPct < 2 && (fps == null || fps >= 8)) level = 'good';
    else if (lossPct < 8) level = 'fair';
    else level = 'poor';
    if (sendKbps != null && sendKbps < 80) level = 'poor';
    else if (sendKbps != null && sendKbps < 150 && level === 'good') level = 'fair';
    this.#set(level);
  }

  #set(level) {
    if (level === this.level) return;
    const was = this.level;
    this.level = level;
    this.#onChange(level, was);
  }
}
