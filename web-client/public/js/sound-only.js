// Sound only: a call that goes on without video when a link cannot carry it. Two ways in:
// staff switch the whole call (the consultation's `audio_only`, every page in it follows),
// or a person takes the offer their own page makes when its link has stayed too weak for
// video (QualityMonitor's onVideoWeak, quality.js). Either way the page turns its camera
// off (the others see "camera off") and asks the SFU for nobody's video (receive_video),
// so that what the link carries goes to the sound; when it ends, the camera comes back as
// it was and the video with it. Shared by the patient's page and the clinician's.

/** What the page says, in plain words, for each way of being in sound only. */
export const SOUND_ONLY_TEXT = {
  offer: 'Your connection is too weak for video. Turn video off to keep the sound clear?',
  mine: 'Sound only: video is off to keep the call going on your connection.',
  byStaff: 'The clinic has switched this call to sound only, to keep it going on a weak connection.',
};

/** How long (ms) "Not now" keeps the offer away. */
export const OFFER_AGAIN_MS = 120_000;

export class SoundOnly {
  #devices;
  #media;
  #onChange;
  #byStaff = false;
  #mine = false;
  #applied = false;
  #tookCamera = false;
  #offered = false;
  #declinedAt = null;
  #queue = Promise.resolve();
  #activeMs = 0;
  #activeSince = null;
  #ui = null;
  #words = SOUND_ONLY_TEXT;

  /**
   * @param {object} o
   * @param {() => object} o.devices  the page's LocalDevices (devices.js), now
   * @param {object} o.media  the page's MediaSession (media.js)
   * @param {() => void} o.onChange  what the page shows must be drawn again
   */
  constructor({ devices, media, onChange }) {
    this.#devices = devices;
    this.#media = media;
    this.#onChange = onChange;
  }

  /**
   * The page's notice: `ui` its elements {box, text, yes, no, back} ("Turn video off",
   * "Not now", "Turn video back on"), `words` what it says for each state; its buttons act
   * here.
   */
  attach(ui, words = SOUND_ONLY_TEXT) {
    this.#ui = ui;
    this.#words = words;
    ui.yes.addEventListener('click', () => this.setMine(true));
    ui.no.addEventListener('click', () => this.decline());
    ui.back.addEventListener('click', () => this.setMine(false));
  }

  /**
   * Draws the notice as things are (hidden when `visible` is false); returns its new text
   * when that changed (for the page to say), else null.
   */
  draw(visible = true) {
    const ui = this.#ui;
    if (!ui) return null;
    const showing = visible ? this.showing : null;
    ui.box.hidden = !showing;
    ui.box.dataset.state = showing ?? '';
    ui.yes.hidden = showing !== 'offer';
    ui.no.hidden = showing !== 'offer';
    ui.back.hidden = showing !== 'mine';
    const text = showing ? this.#words[showing] : '';
    if (ui.text.textContent === text) return null;
    ui.text.textContent = text;
    return text;
  }

  /** Whether the page is in sound only now. */
  get active() {
    return this.#byStaff || this.#mine;
  }

  /** How long (ms) this page has been in sound only, since the call started. */
  get activeMs() {
    return this.#activeMs + (this.#activeSince === null ? 0 : performance.now() - this.#activeSince);
  }

  /** What the page shows: 'byStaff', 'mine', 'offer' or null. */
  get showing() {
    if (this.#byStaff) return 'byStaff';
    if (this.#mine) return 'mine';
    return this.#offered ? 'offer' : null;
  }

  /** The call's sound-only state, as the server says (the consultation's audio_only). */
  setByStaff(on) {
    if (this.#byStaff === !!on) return this.#queue;
    this.#byStaff = !!on;
    if (on) this.#offered = false;
    return this.#apply();
  }

  /** The person turns video off (taking the offer) or back on. */
  setMine(on) {
    this.#offered = false;
    if (!on) this.#declinedAt = null;
    if (this.#mine === !!on) return this.#queue;
    this.#mine = !!on;
    return this.#apply();
  }

  /** The link became too weak for video (offer sound only), or is no longer. */
  videoWeak(weak) {
    const declined = this.#declinedAt !== null && performance.now() - this.#declinedAt < OFFER_AGAIN_MS;
    const offer = weak && !this.active && !declined;
    if (offer === this.#offered) return;
    this.#offered = offer;
    this.#onChange();
  }

  /** "Not now": the offer goes, and does not come back for OFFER_AGAIN_MS. */
  decline() {
    this.#declinedAt = performance.now();
    this.#offered = false;
    this.#onChange();
  }

  /** The call is over for this page: the person's own choice and any offer are forgotten. */
  reset() {
    this.#activeMs = 0;
    this.#activeSince = this.#applied ? performance.now() : null;
    this.#offered = false;
    this.#declinedAt = null;
    this.#byStaff = false;
    this.#mine = false;
    return this.#apply();
  }

  /** Camera and the SFU's video follow the state, one change at a time. */
  #apply() {
    this.#queue = this.#queue
      .then(async () => {
        const active = this.active;
        if (active === this.#applied) return;
        this.#applied = active;
        if (active) this.#activeSince = performance.now();
        else if (this.#activeSince !== null) {
          this.#activeMs += performance.now() - this.#activeSince;
          this.#activeSince = null;
        }
        this.#media.setReceiveVideo(!active);
        // Only a camera that is on is turned off (and back on after): devices never
        // started are left alone, so nothing is asked of the browser without a press.
        const d = this.#devices();
        if (active) {
          this.#tookCamera = d.started && !d.cameraOff;
          if (this.#tookCamera) await d.setCameraOff(true);
        } else {
          if (this.#tookCamera && d.cameraOff) await d.setCameraOff(false);
          this.#tookCamera = false;
        }
      })
      .catch((e) => console.warn('sound only', e))
      .finally(() => this.#onChange());
    return this.#queue;
  }
}
