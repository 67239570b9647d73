// The video tiles of a call, as every page shows them (patient, staff, call): one tile per
// other participant, saying in words and with an icon when that person is muted, has
// their camera off (a calm placeholder instead of a black or frozen picture) or shares a
// screen; and the self view, which shows what is really sent: the camera, "Your camera
// is off", or the shared screen.
//
// Sound: a tile's video plays with sound if the browser allows it. If the browser
// refuses sound before the person has pressed anything (iOS Safari, and every browser's
// autoplay rules), the video plays muted and a "Tap to turn on sound" button appears on
// it; one press turns the sound on for every tile.
//
// Nothing here knows about the websocket; pages pass MediaSession's streams and peer
// states in.

const SVG = 'http://www.w3.org/2000/svg';

/** Simple line icons (24x24), drawn in currentColor; always next to words, never alone. */
const ICONS = {
  'mic-off': ['M12 3a3 3 0 0 1 3 3v5a3 3 0 0 1-6 0V6a3 3 0 0 1 3-3z', 'M5 11a7 7 0 0 0 14 0', 'M12 18v3', 'M3 3l18 18'],
  'camera-off': ['M3 7h10a2 2 0 0 1 2 2v6a2 2 0 0 1-2 2H3z', 'M15 11l6-4v10l-6-4', 'M2 3l19 18'],
  screen: ['M3 4h18v12H3z', 'M8 20h8', 'M12 16v4'],
  person: ['M12 12a4 4 0 1 0 0-8 4 4 0 0 0 0 8z', 'M4 21a8 8 0 0 1 16 0'],
};

export function icon(name) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  svg.setAttribute('class', `icon icon-${name}`);
  for (const d of ICONS[name]) {
    const path = document.createElementNS(SVG, 'path');
    path.setAttribute('d', d);
    svg.append(path);
  }
  return svg;
}

function el(tag, cls, ...children) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  e.append(...children);
  return e;
}

/** The words of a peer's state on its tile. */
export const TILE_WORDS = {
  muted: 'Muted',
  cameraOff: 'Camera off',
  screen: 'A screen is being shared',
  sound: 'Tap to turn on sound',
};

const ON = { audio: true, video: true, screen: false };

/**
 * The remote participants' tiles in `container`.
 *   label(stream, n)     the accessible name of the n-th tile's video (0-based)
 *   who(stream, n)       the short name on the tile ("The clinic", "Pat Example")
 *   words                overrides of TILE_WORDS; `screen` may be a function (stream, n)
 *                        (who shares the screen)
 *   onSoundBlocked()     the browser refused sound: a button now offers it
 *   onPeerChange(stream, state, was, n)   a tile's state changed, or a tile appeared
 *                        showing other than what was known of its stream (someone who
 *                        was already muted): for announcing it
 */
export class Tiles {
  #blocked = new Set(); // videos playing muted because sound was refused
  #known = new Map(); // stream id -> the state last shown for it (kept while a tile is
  // re-created: a renegotiation can take a stream away and give it back)

  constructor(container, { label, who, words = {}, onSoundBlocked, onPeerChange } = {}) {
    this.container = container;
    this.label = label || ((_, n) => (n === 0 ? 'Video of another participant' : `Video of another participant (${n + 1})`));
    this.who = who || (() => '');
    this.words = { ...TILE_WORDS, ...words };
    this.onSoundBlocked = onSoundBlocked || (() => {});
    this.onPeerChange = onPeerChange || (() => {});
  }

  get count() {
    return this.container.querySelectorAll('figure.tile').length;
  }

  /** Whether any tile plays without sound because the browser refused it. */
  get soundBlocked() {
    return this.#blocked.size > 0;
  }

  /** A tile for `stream`, showing `state` ({audio, video, screen}). */
  add(stream, state = ON) {
    const n = this.count;
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    video.setAttribute('playsinline', '');
    video.setAttribute('aria-label', this.label(stream, n));
    video.srcObject = stream;
    // The tile takes the shape of the picture (a phone held upright sends a tall one).
    video.addEventListener('resize', () => {
      if (video.videoWidth && video.videoHeight) video.style.setProperty('--ar', `${video.videoWidth} / ${video.videoHeight}`);
    });
    const off = el('div', 'tile-off', icon('camera-off'), el('p', '', this.words.cameraOff));
    off.hidden = true;
    const who = el('span', 'who', this.who(stream, n));
    const muted = el('span', 'flag flag-muted', icon('mic-off'), this.words.muted);
    const screenText = typeof this.words.screen === 'function' ? this.words.screen(stream, n) : this.words.screen;
    const screen = el('span', 'flag flag-screen', icon('screen'), screenText);
    const caption = el('figcaption', 'tile-state', who, muted, screen);
    const figure = el('figure', 'tile', video, off, caption);
    figure.dataset.stream = stream.id;
    this.container.append(figure);
    this.container.dataset.count = String(this.count);
    const was = this.#known.get(stream.id) ?? ON;
    this.#render(figure, state);
    this.#changed(figure, was);
    this.#play(figure, video);
    return figure;
  }

  /** Shows `state` on the tile of `streamId` (if it is shown). */
  set(streamId, state) {
    const figure = this.#tile(streamId);
    if (!figure) return;
    const was = this.#state(figure);
    this.#render(figure, state);
    this.#changed(figure, was);
  }

  /** The state a tile shows, or null. */
  state(streamId) {
    const figure = this.#tile(streamId);
    return figure ? this.#state(figure) : null;
  }

  /** Removes the tile of `stream` (every tile, and what was known of them, if none is given). */
  remove(stream) {
    if (!stream) this.#known.clear();
    for (const figure of [...this.container.querySelectorAll('figure.tile')]) {
      if (!stream || figure.dataset.stream === stream.id) {
        const v = figure.querySelector('video');
        this.#blocked.delete(v);
        v.srcObject = null;
        figure.remove();
      }
    }
    this.container.dataset.count = String(this.count);
  }

  /** Turns the sound on in every tile (call from a press: the browser then allows it). */
  soundOn() {
    for (const video of [...this.#blocked]) {
      video.muted = false;
      video.play().catch(() => {});
      this.#blocked.delete(video);
      video.closest('figure')?.querySelector('button.unmute')?.remove();
    }
  }

  #tile(streamId) {
    return [...this.container.querySelectorAll('figure.tile')].find((f) => f.dataset.stream === streamId) ?? null;
  }

  #index(figure) {
    return [...this.container.querySelectorAll('figure.tile')].indexOf(figure);
  }

  #state(figure) {
    return { audio: figure.dataset.audio === 'on', video: figure.dataset.video === 'on', screen: figure.dataset.screen === 'on' };
  }

  /** Tells the page when what a tile shows differs from what was shown for its stream. */
  #changed(figure, was) {
    const now = this.#state(figure);
    this.#known.set(figure.dataset.stream, now);
    if (was.audio !== now.audio || was.video !== now.video || was.screen !== now.screen) {
      this.onPeerChange(figure.dataset.stream, now, was, this.#index(figure));
    }
  }

  #render(figure, { audio = true, video = true, screen = false } = ON) {
    figure.dataset.audio = audio ? 'on' : 'off';
    figure.dataset.video = video ? 'on' : 'off';
    figure.dataset.screen = video && screen ? 'on' : 'off';
    figure.querySelector('.tile-off').hidden = video;
    figure.querySelector('.flag-muted').hidden = audio;
    figure.querySelector('.flag-screen').hidden = !(video && screen);
  }

  #play(figure, video) {
    video.play().catch(() => {
      if (!video.isConnected) return;
      // Sound refused until the person presses something: play muted, offer the sound.
      video.muted = true;
      video.play().catch(() => {});
      this.#blocked.add(video);
      const button = el('button', 'primary unmute', this.words.sound);
      button.type = 'button';
      button.addEventListener('click', () => this.soundOn());
      figure.append(button);
      this.onSoundBlocked(button);
    });
  }
}

/**
 * The self view: `figure` holds a muted, mirrored `video`, a "Your camera is off"
 * placeholder, a "You are muted" flag and a caption. `show()` draws what is sent.
 */
export class SelfView {
  #track = null;

  constructor(figure, { caption = 'You', sharingCaption = 'You are sharing your screen', offText = 'Your camera is off', mutedText = 'You are muted' } = {}) {
    this.figure = figure;
    this.video = figure.querySelector('video');
    this.video.autoplay = true;
    this.video.muted = true;
    this.video.playsInline = true;
    this.texts = { caption, sharingCaption, offText };
    this.offWords = el('p', '', offText);
    this.off = el('div', 'self-off', icon('camera-off'), this.offWords);
    this.off.hidden = true;
    this.muted = el('p', 'self-muted', icon('mic-off'), el('span', '', mutedText));
    this.muted.hidden = true;
    this.caption = figure.querySelector('figcaption') ?? el('figcaption');
    figure.append(this.off, this.muted, this.caption);
  }

  /**
   * track: the video track sent (camera or screen) or null; screen: it is a screen;
   * mirrored: a front camera (shown as in a mirror); muted: the microphone is off;
   * offText: what the placeholder says instead of "Your camera is off".
   */
  show({ track = null, screen = false, mirrored = true, muted = false, offText = this.texts.offText } = {}) {
    const live = track && track.readyState === 'live' && track.enabled ? track : null;
    if (live !== this.#track) {
      this.#track = live;
      // A stream of its own per track: a video element does not always draw a track
      // swapped inside the stream it already plays (a shared screen came out black).
      this.video.srcObject = live ? new MediaStream([live]) : null;
      if (live) this.video.play().catch(() => {});
    }
    this.video.hidden = !live;
    this.off.hidden = !!live;
    if (this.offWords.textContent !== offText) this.offWords.textContent = offText;
    this.figure.dataset.video = live ? (screen ? 'screen' : 'camera') : 'off';
    this.figure.classList.toggle('mirrored', !!live && !screen && mirrored);
    this.muted.hidden = !muted;
    this.caption.textContent = live && screen ? this.texts.sharingCaption : this.texts.caption;
  }

  clear() {
    this.show({});
    this.muted.hidden = true;
  }
}
