// The patient's call screen: the clinic's video large (one tile per other participant,
// e.g. the clinician and an interpreter), the self view, and the connection-quality
// indicator, worked out from MediaSession.stats() every two seconds.

/**
 * Adds a tile for a remote participant's stream to `container`. If the browser refuses
 * to play sound before the person has pressed anything (autoplay rules), the video plays
 * muted and a "Turn on sound" button appears on the tile.
 */
export function addRemoteVideo(container, stream, onSoundBlocked) {
  const figure = document.createElement('figure');
  figure.className = 'tile';
  figure.dataset.stream = stream.id;
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  const n = container.children.length;
  video.setAttribute('aria-label', n === 0 ? 'Video from the clinic' : `Video from the clinic (person ${n + 1})`);
  video.srcObject = stream;
  // The tile takes the shape of the picture (a phone held upright sends a tall one).
  video.addEventListener('resize', () => {
    if (video.videoWidth && video.videoHeight) video.style.setProperty('--ar', `${video.videoWidth} / ${video.videoHeight}`);
  });
  figure.append(video);
  container.append(figure);
  container.dataset.count = String(container.children.length);
  video.play().catch(() => {
    video.muted = true;
    video.play().catch(() => {});
    const unmute = document.createElement('button');
    unmute.type = 'button';
    unmute.className = 'primary unmute';
    unmute.textContent = 'Turn on sound';
    unmute.addEventListener('click', () => {
      video.muted = false;
      video.play().catch(() => {});
      unmute.remove();
    });
    figure.append(unmute);
    onSoundBlocked?.(unmute);
  });
}

/** Removes the tile of `stream` (or every tile if no stream is given). */
export function removeRemoteVideo(container, stream) {
  for (const figure of [...container.querySelectorAll('figure')]) {
    if (!stream || figure.dataset.stream === stream.id) {
      const v = figure.querySelector('video');
      if (v) v.srcObject = null;
      figure.remove();
    }
  }
  container.dataset.count = String(container.children.length);
}

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
