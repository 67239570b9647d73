// A clinician's side of a call: camera and microphone, the MediaSession (media.js) for
// the consultation staff.js says they are in, the remote videos, and the call controls
// (mute, camera off, screen share, leave and rejoin the video). The page decides WHICH
// consultation (`want`); this module joins it, keeps it joined across dropped
// connections, and releases the camera when there is none.
//
// Screen sharing swaps the camera track for the screen's on the publisher connection's
// video sender (MediaSession.replaceTrack: no renegotiation, the patient's video simply
// changes); before a session is connected, the next join sends the new video.

import { Backoff, MediaSession } from './media.js';
import { $, h } from './staff-common.js';

/** Error codes of a refused join_media after which trying again later may work. */
const RETRY_JOIN_CODES = new Set(['unavailable', 'conflict', 'internal', 'rate_limited']);

// --- the call ---------------------------------------------------------------------------------

export class StaffCall {
  /**
   * @param {object} o
   * @param {(msg: object) => boolean} o.send  sends a media message on the websocket
   * @param {(stream: MediaStream) => string} o.label  accessible name of a remote video
   * @param {() => void} o.onChange  the call's state changed (for the page's rendering)
   */
  constructor({ send, label, onChange }) {
    this.label = label;
    this.onChange = onChange;
    this.wanted = null; // the consultation to be in, or null
    this.socketOpen = false;
    this.noRejoin = null; // a consultation left on purpose or refused for good
    this.local = undefined; // {stream: sent, camera, mic} once getUserMedia has answered
    this.starting = false;
    this.screen = null; // the screen's video track while sharing
    this.muted = false;
    this.cameraOff = false;
    this.retry = new Backoff(() => this.#reconcile()); // joins again after a failure
    this.status = '';
    this.ui = {
      status: $('call-status'),
      remote: $('remote'),
      self: $('self-view'),
      mic: $('mic'),
      cam: $('cam'),
      share: $('share'),
      leave: $('leave-media'),
      rejoin: $('rejoin'),
    };
    this.media = new MediaSession({
      send,
      localStream: null,
      onRemoteStream: (s) => this.#addRemote(s),
      onRemoteStreamRemoved: (s) => this.#removeRemote(s),
      onState: (s) => this.#onMediaState(s),
    });
    this.ui.mic.addEventListener('click', () => this.setMuted(!this.muted));
    this.ui.cam.addEventListener('click', () => this.setCameraOff(!this.cameraOff));
    this.ui.share.addEventListener('click', () => (this.screen ? this.stopShare() : this.share()));
    this.ui.leave.addEventListener('click', () => this.leave());
    this.ui.rejoin.addEventListener('click', () => this.rejoin());
    if (!navigator.mediaDevices?.getDisplayMedia) this.ui.share.hidden = true;
  }

  /** A media message from the server? Then it is consumed. */
  handle(msg) {
    return this.media.handle(msg);
  }

  /** Which consultation to be in (null: none). */
  want(consultation) {
    if (consultation !== this.wanted) {
      this.wanted = consultation;
      this.noRejoin = null;
      this.retry.cancel();
    }
    this.#reconcile();
  }

  /** The websocket opened or dropped (the server ends the media of a closed socket). */
  socket(open) {
    this.socketOpen = open;
    if (!open && this.media.state !== 'idle') this.media.close();
    this.#reconcile();
  }

  leave() {
    this.noRejoin = this.wanted;
    this.media.leave();
    this.#releaseDevices();
    this.say('You left the video. The call goes on: choose “Rejoin video” to go back, or “End call” to end it.');
    this.#render();
    this.ui.rejoin.focus();
  }

  rejoin() {
    this.noRejoin = null;
    this.retry.cancel();
    this.#reconcile();
    this.#render();
    this.ui.leave.focus();
  }

  /** Signing out: leaves and releases everything. */
  stop() {
    this.wanted = null;
    this.retry.cancel();
    this.media.leave();
    this.#releaseDevices();
  }

  setMuted(on) {
    this.muted = on;
    for (const t of this.local?.stream.getAudioTracks() || []) t.enabled = !on;
    this.say(on ? 'Your microphone is off.' : 'Your microphone is on.');
    this.#render();
  }

  setCameraOff(on) {
    this.cameraOff = on;
    if (this.local?.camera) this.local.camera.enabled = !on;
    this.say(on ? 'Your camera is off.' : 'Your camera is on.');
    this.#render();
  }

  async share() {
    let track;
    try {
      const s = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
      track = s.getVideoTracks()[0];
    } catch (e) {
      this.say(
        e.name === 'NotAllowedError'
          ? 'Screen sharing was cancelled or blocked by the browser.'
          : 'Your screen cannot be shared from this browser.',
      );
      return;
    }
    if (!track || !this.local) {
      track?.stop();
      return;
    }
    track.contentHint = 'detail';
    track.addEventListener('ended', () => this.stopShare()); // the browser's own "Stop sharing"
    this.screen = track;
    await this.#sendVideo(track);
    this.say('You are sharing your screen. The patient sees it instead of your camera.');
    this.#render();
  }

  async stopShare() {
    if (!this.screen) return;
    const t = this.screen;
    this.screen = null;
    t.stop();
    await this.#sendVideo(this.local?.camera || null);
    this.say('Screen sharing stopped. The patient sees your camera again.');
    this.#render();
  }

  /** For tests and diagnostics: the page's media figures. */
  async stats() {
    return this.media.stats();
  }

  state() {
    return {
      consultation: this.wanted,
      media: this.media.state,
      remoteVideos: this.ui.remote.querySelectorAll('video').length,
      muted: this.muted,
      cameraOff: this.cameraOff,
      sharing: !!this.screen,
      left: this.noRejoin !== null && this.noRejoin === this.wanted,
      status: this.status,
    };
  }

  say(text) {
    this.status = text;
    if (this.ui.status.textContent !== text) this.ui.status.textContent = text;
  }

  // --- internals ------------------------------------------------------------------------------

  #reconcile() {
    const want = this.wanted;
    if (this.media.active && this.media.consultation !== want) this.media.leave();
    if (!want) {
      this.#releaseDevices();
      this.#render();
      return;
    }
    if (want === this.noRejoin || !this.socketOpen || this.retry.pending || this.media.active) {
      this.#render();
      return;
    }
    if (this.local === undefined) {
      this.#startDevices();
      return;
    }
    this.media.localStream = this.local.stream;
    this.media.join(want);
    this.#render();
  }

  async #startDevices() {
    if (this.starting) return;
    this.starting = true;
    this.say('Starting your camera and microphone…');
    let stream = null;
    let problem = null;
    for (const c of [{ audio: true, video: true }, { audio: true, video: false }, { audio: false, video: true }]) {
      try {
        stream = await navigator.mediaDevices.getUserMedia(c);
        break;
      } catch (e) {
        problem ??= e;
      }
    }
    this.starting = false;
    if (!this.wanted) {
      for (const t of stream?.getTracks() || []) t.stop();
      return;
    }
    stream ||= new MediaStream();
    const camera = stream.getVideoTracks()[0] || null;
    const mic = stream.getAudioTracks()[0] || null;
    if (camera) camera.enabled = !this.cameraOff;
    if (mic) mic.enabled = !this.muted;
    this.local = { stream, camera, mic };
    this.ui.self.srcObject = stream;
    if (!camera || !mic) this.say(deviceProblem(problem, !camera && !mic ? 'both' : camera ? 'mic' : 'camera'));
    this.#reconcile();
  }

  #releaseDevices() {
    if (this.screen) {
      this.screen.stop();
      this.screen = null;
    }
    for (const t of this.local?.stream.getTracks() || []) t.stop();
    if (this.local?.camera) this.local.camera.stop();
    this.local = undefined;
    this.ui.self.srcObject = null;
  }

  /** Sends `track` (screen or camera) as our video: in place if possible, else by rejoining. */
  async #sendVideo(track) {
    const stream = this.local.stream;
    for (const t of stream.getVideoTracks()) stream.removeTrack(t);
    if (track) stream.addTrack(track);
    this.ui.self.srcObject = stream;
    try {
      if (await this.media.replaceTrack('video', track || null)) return;
    } catch (e) {
      console.warn('replaceTrack failed; rejoining with the new video', e);
    }
    if (this.media.active) this.media.join(this.media.consultation);
  }

  #onMediaState({ state, consultation, reason, retryable, error }) {
    switch (state) {
      case 'joining':
      case 'connecting':
        this.say('Connecting the call…');
        break;
      case 'connected':
        this.retry.succeeded();
        this.#sayInCall();
        break;
      case 'ended':
        if (retryable) {
          this.say('The call connection was lost. Reconnecting…');
          this.retry.later();
        } else {
          this.noRejoin = consultation;
          this.say(
            reason === 'consultation_ended'
              ? 'The call has ended.'
              : 'You are no longer in the video. Choose “Rejoin video” to go back.',
          );
        }
        break;
      case 'failed':
        if (RETRY_JOIN_CODES.has(error?.code)) {
          this.say('The call could not be connected yet. Trying again…');
          this.retry.later();
        } else {
          this.noRejoin = consultation;
          this.say(`The video could not be joined: ${error?.message ?? 'unknown error'}.`);
        }
        break;
    }
    this.#render();
  }

  #sayInCall() {
    if (this.media.state !== 'connected') return;
    const n = this.ui.remote.querySelectorAll('figure').length;
    this.say(
      n === 0
        ? 'Connected. Waiting for the patient’s video…'
        : `In the call: you can see and hear ${n === 1 ? 'one other person' : `${n} other people`}.`,
    );
  }

  #addRemote(stream) {
    const video = h('video', { autoplay: true, playsinline: true, 'aria-label': this.label(stream) });
    video.srcObject = stream;
    const figure = h('figure', { 'data-stream': stream.id }, video);
    this.ui.remote.append(figure);
    video.play().catch(() => {
      // Autoplay with sound refused: play muted and offer to turn the sound on.
      video.muted = true;
      video.play().catch(() => {});
      const on = h('button', { type: 'button', onclick: () => { video.muted = false; on.remove(); } }, 'Turn on sound');
      figure.append(on);
    });
    this.#sayInCall();
    this.onChange();
  }

  #removeRemote(stream) {
    for (const f of this.ui.remote.querySelectorAll('figure')) {
      if (f.dataset.stream === stream.id) {
        f.querySelector('video').srcObject = null;
        f.remove();
      }
    }
    this.#sayInCall();
    this.onChange();
  }

  /** The labels and states of the call's own controls. */
  #render() {
    const { mic, cam, share, leave, rejoin } = this.ui;
    const hasMic = !!this.local?.mic;
    const hasCam = !!this.local?.camera;
    mic.setAttribute('aria-pressed', String(this.muted));
    cam.setAttribute('aria-pressed', String(this.cameraOff));
    share.setAttribute('aria-pressed', String(!!this.screen));
    mic.disabled = this.local !== undefined && !hasMic;
    cam.disabled = this.local !== undefined && !hasCam;
    share.disabled = !this.media.active;
    const left = this.wanted !== null && this.noRejoin === this.wanted;
    leave.hidden = left;
    rejoin.hidden = !left;
    leave.disabled = !this.media.active;
    this.onChange();
  }
}

function deviceProblem(e, missing) {
  const what = { both: 'camera and microphone', camera: 'camera', mic: 'microphone' }[missing];
  const effect = {
    both: 'The patient can neither see nor hear you.',
    camera: 'The patient can hear you but not see you.',
    mic: 'The patient can see you but not hear you.',
  }[missing];
  if (e?.name === 'NotAllowedError') {
    return `The browser blocked your ${what}. ${effect} Allow them for this site (the camera icon in the address bar), then choose “Leave video” and “Rejoin video”.`;
  }
  if (e?.name === 'NotReadableError') {
    return `Your ${what} is in use by another program. ${effect} Close that program, then leave and rejoin the video.`;
  }
  return `No ${what} was found. ${effect}`;
}
