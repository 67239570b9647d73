// A clinician's side of a call: the MediaSession (media.js) for the consultation staff.js
// says they are in, the other people's tiles (tiles.js: muted, camera off, a shared
// screen, said in words), the self view (the camera, "Your camera is off", or the shared
// screen), and the call controls (mute, camera off, switch camera, screen share, leave
// and rejoin the video). The page decides WHICH consultation (`want`); this module joins
// it, keeps it joined across dropped connections, and releases the camera when there is
// none.
//
// Camera and microphone (devices.js) are asked for only from a press: the press that
// starts a call ("Call next patient", "Switch to this call", "Rejoin video": the page
// calls `prepare()` in its click handler) or "Turn on camera and microphone" in the call
// panel, shown while they are off (a patient admitted by reception starts the call with
// no press of the clinician's: until then it receives and sends nothing). Once turned on
// in this page, later calls take them again by themselves (no new prompt).
//
// Screen sharing swaps the camera track for the screen's on the publisher connection's
// video sender (MediaSession.replaceTrack: no renegotiation, the patient's video simply
// changes). The camera is given back while the page is hidden only on a touch device
// (phone, tablet: the app went to the background); a clinician at a desk who switches to
// the patient's record in another tab stays in view.
//
// The clinician's own connection has the patient's indicator (quality.js), and the call
// can go on in sound only (sound-only.js): for everyone, when the page says the call's
// consultation is switched (`setCallSoundOnly`, from the server), or for this page alone,
// offered when its own link stays too weak for video.

import { Backoff, MediaSession } from './media.js';
import { PathReporter } from './media-path.js';
import { LocalDevices } from './devices.js';
import { SelfView, Tiles } from './tiles.js';
import { QualityMonitor, QualityReporter } from './quality.js';
import { SoundOnly } from './sound-only.js';
import { $ } from './staff-common.js';

/** The clinician's connection, in words. */
const QUALITY_TEXT = {
  none: 'Connection: checking',
  good: 'Connection: good',
  fair: 'Connection: fair. Your picture may be less sharp.',
  poor: 'Connection: poor. Video may freeze; sound should carry on.',
};

/** Sound only, in the clinician's words. */
const SOUND_ONLY_TEXT = {
  offer: 'Your connection is too weak for video. Turn your video off to keep the sound clear?',
  mine: 'Sound only for you: your video is off, and you receive none, to keep the call going on your connection.',
  byStaff: 'This call is in sound only: nobody sends or receives video. Choose “Turn video back on for everyone” when the connection allows.',
};

/** Error codes of a refused join_media after which trying again later may work. */
const RETRY_JOIN_CODES = new Set(['unavailable', 'conflict', 'internal', 'rate_limited']);

/** A phone or tablet: no hover, a finger for a pointer. */
const touchFirst = () => window.matchMedia?.('(hover: none) and (pointer: coarse)').matches ?? false;

// --- the call ---------------------------------------------------------------------------------

export class StaffCall {
  /**
   * @param {object} o
   * @param {(msg: object) => boolean} o.send  sends a media message on the websocket
   * @param {(stream: MediaStream) => string} o.label  accessible name of a remote video
   * @param {(stream: MediaStream) => string} [o.who]  the name shown on a remote tile
   * @param {() => void} o.onChange  the call's state changed (for the page's rendering)
   */
  constructor({ send, label, who, onChange }) {
    this.label = label;
    this.onChange = onChange;
    this.wanted = null; // the consultation to be in, or null
    this.socketOpen = false;
    this.noRejoin = null; // a consultation left on purpose or refused for good
    this.screen = null; // the screen's video track while sharing
    this.retry = new Backoff(() => this.#reconcile()); // joins again after a failure
    this.status = '';
    this.problem = null; // the devices' problem, in words
    this.starting = null; // the devices being turned on
    this.expecting = false; // a press asked for a call that has not arrived yet
    this.ui = {
      status: $('call-status'),
      remote: $('remote'),
      self: $('self-view'),
      mic: $('mic'),
      cam: $('cam'),
      switchCam: $('switch-cam'),
      share: $('share'),
      devicesOn: $('devices-on'),
      leave: $('leave-media'),
      rejoin: $('rejoin'),
      quality: $('call-quality'),
      qualityText: $('call-quality-text'),
    };
    this.devices = new LocalDevices({
      onChange: (c) => this.#devicesChanged(c),
      releaseWhenHidden: () => !this.screen && touchFirst(),
    });
    this.tiles = new Tiles(this.ui.remote, {
      label: (s) => this.label(s),
      who: (s) => who?.(s) ?? '',
      onPeerChange: (stream, now, was) => {
        const name = who?.({ id: stream }) || 'The other person';
        if (was.audio !== now.audio) this.say(now.audio ? `${name}’s microphone is on again.` : `${name} has muted their microphone.`);
        if (was.video !== now.video) this.say(now.video ? `${name}’s camera is on again.` : `${name} has turned their camera off.`);
        if (was.screen !== now.screen) this.say(now.screen ? `${name} is sharing their screen.` : `${name} has stopped sharing their screen.`);
      },
    });
    this.self = new SelfView($('self-view').closest('figure'));
    this.media = new MediaSession({
      send,
      localStream: this.devices.stream,
      onRemoteStream: (s) => this.#addRemote(s),
      onRemoteStreamRemoved: (s) => this.#removeRemote(s),
      onState: (s) => this.#onMediaState(s),
      onPeerState: (stream, state) => this.tiles.set(stream, state),
    });
    this.soundOnly = new SoundOnly({ devices: () => this.devices, media: this.media, onChange: () => this.#render() });
    this.soundOnly.attach({ box: $('sound-only'), text: $('sound-only-text'), yes: $('sound-only-yes'), no: $('sound-only-no'), back: $('video-back') }, SOUND_ONLY_TEXT);
    this.quality = new QualityMonitor(this.media, (level) => this.#renderQuality(level), {
      expectsVideo: () => this.media.receiveVideo && this.media.anyPeerVideo(),
      sendsVideo: () => !!this.screen || (!!this.devices.cameraTrack && !this.devices.cameraOff),
      onVideoWeak: (weak) => this.soundOnly.videoWeak(weak),
    });
    // Tells the server how this page's media flows: the board shows it to every member
    // of staff of the clinic, this clinician included.
    this.paths = new PathReporter(this.media, send);
    this.paths.start();
    // Tells the server how the call goes, for the clinic's support desk.
    this.reporter = new QualityReporter(this.media, send, () => ({ path: this.paths.sent, audioOnlyMs: this.soundOnly.activeMs }));
    this.ui.mic.addEventListener('click', () => this.setMuted(!this.devices.muted));
    this.ui.cam.addEventListener('click', () => this.setCameraOff(!this.devices.cameraOff));
    this.ui.switchCam.addEventListener('click', () => this.switchCamera());
    this.ui.share.addEventListener('click', () => (this.screen ? this.stopShare() : this.share()));
    this.ui.devicesOn.addEventListener('click', () => this.turnOnDevices());
    this.ui.leave.addEventListener('click', () => this.leave());
    this.ui.rejoin.addEventListener('click', () => this.rejoin());
    if (!navigator.mediaDevices?.getDisplayMedia) this.ui.share.hidden = true;
  }

  get muted() {
    return this.devices.muted;
  }

  get cameraOff() {
    return this.devices.cameraOff;
  }

  /** A media message from the server? Then it is consumed. */
  handle(msg) {
    return this.media.handle(msg);
  }

  /** Which consultation to be in (null: none). */
  want(consultation) {
    if (consultation) this.expecting = false;
    if (consultation !== this.wanted) {
      this.wanted = consultation;
      this.noRejoin = null;
      this.retry.cancel();
      this.soundOnly.reset();
    }
    this.#reconcile();
  }

  /** Whether the call (the wanted consultation) is switched to sound only for everyone. */
  setCallSoundOnly(on) {
    this.soundOnly.setByStaff(on);
  }

  /**
   * A press that will start a call (call someone in, switch calls, rejoin): the browser
   * asks for the camera and microphone now, while the press counts as one.
   */
  prepare() {
    this.expecting = true;
    if (!this.devices.micTrack && !this.devices.cameraTrack) this.#startDevices();
  }

  /** The call that prepare() was for did not come (the command was refused). */
  unprepare() {
    this.expecting = false;
    this.#reconcile();
  }

  /** "Turn on camera and microphone". */
  async turnOnDevices() {
    await this.#startDevices();
    this.ui.mic.focus();
  }

  /** The websocket opened or dropped (the media session waits for it: resume()). */
  socket(open) {
    this.socketOpen = open;
    if (!open && this.media.state !== 'idle') this.media.suspend();
    this.#reconcile();
  }

  /** The websocket is back (after `welcome`): the suspended media session is asked for. */
  resume() {
    this.media.resume();
  }

  leave() {
    this.noRejoin = this.wanted;
    this.quality.stop();
    this.reporter.stop();
    this.media.leave();
    this.#releaseDevices();
    this.say('You left the video. The call goes on: choose “Rejoin video” to go back, or “End call” to end it.');
    this.#render();
    this.ui.rejoin.focus();
  }

  rejoin() {
    this.noRejoin = null;
    this.retry.cancel();
    this.prepare();
    this.#reconcile();
    this.#render();
    this.ui.leave.focus();
  }

  /** Signing out: leaves and releases everything. */
  stop() {
    this.wanted = null;
    this.retry.cancel();
    this.quality.stop();
    this.reporter.stop();
    this.soundOnly.reset();
    this.media.leave();
    this.#releaseDevices();
  }

  setMuted(on) {
    this.devices.setMuted(on);
    this.say(on ? 'Your microphone is off.' : 'Your microphone is on.');
    this.#render();
  }

  async setCameraOff(on) {
    const done = this.devices.setCameraOff(on);
    this.#render();
    await done;
    this.say(on ? 'Your camera is off.' : 'Your camera is on.');
  }

  async switchCamera() {
    const ok = await this.devices.switchCamera();
    this.say(ok ? 'Now using your other camera.' : 'The other camera could not be started.');
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
    if (!track || !this.media.active) {
      track?.stop();
      return;
    }
    track.contentHint = 'detail';
    track.addEventListener('ended', () => this.stopShare()); // the browser's own "Stop sharing"
    this.screen = track;
    await this.#sendVideo();
    this.say('You are sharing your screen. The patient sees it instead of your camera.');
  }

  async stopShare() {
    if (!this.screen) return;
    const t = this.screen;
    this.screen = null;
    t.stop();
    await this.#sendVideo();
    this.say('Screen sharing stopped. The patient sees your camera again.');
  }

  /** For tests and diagnostics: the page's media figures. */
  async stats() {
    return this.media.stats();
  }

  state() {
    const d = this.devices;
    return {
      consultation: this.wanted,
      media: this.media.state,
      remoteVideos: this.ui.remote.querySelectorAll('video').length,
      tiles: [...this.ui.remote.querySelectorAll('figure.tile')].map((f) => ({ stream: f.dataset.stream, ...this.tiles.state(f.dataset.stream) })),
      soundBlocked: this.tiles.soundBlocked,
      muted: d.muted,
      cameraOff: d.cameraOff,
      devices: { started: d.started, camera: d.camera, microphone: d.microphone, hidden: d.hidden, tracks: d.stream.getTracks().length },
      selfView: this.self.figure.dataset.video ?? 'off',
      sent: this.media.localState,
      path: this.paths.sent,
      sharing: !!this.screen,
      left: this.noRejoin !== null && this.noRejoin === this.wanted,
      status: this.status,
      quality: this.quality.level,
      qualityFigures: { ...this.quality.figures },
      soundOnly: this.soundOnly.showing,
      receiveVideo: this.media.receiveVideo,
    };
  }

  say(text) {
    this.status = text;
    if (this.ui.status.textContent !== text) this.ui.status.textContent = text;
  }

  // --- internals ------------------------------------------------------------------------------

  #reconcile() {
    const want = this.wanted;
    // A suspended session waits for the server's word on resuming it.
    if (this.media.active && !this.media.suspended && this.media.consultation !== want) this.media.leave();
    if (!want) {
      if (!this.expecting) this.#releaseDevices();
      this.#render();
      return;
    }
    if (want === this.noRejoin || !this.socketOpen || this.retry.pending || this.media.active) {
      this.#render();
      return;
    }
    // Turned on once in this page: taken again for this call (no prompt, no press).
    if (this.devices.started && !this.devices.micTrack && !this.devices.cameraTrack) this.#startDevices();
    this.media.localStream = this.devices.stream;
    this.#sendState();
    this.media.join(want);
    this.#render();
  }

  async #startDevices() {
    if (this.starting) return this.starting;
    this.say('Starting your camera and microphone…');
    this.starting = this.devices.start().finally(() => {
      this.starting = null;
    });
    const { camera, microphone } = await this.starting;
    if (!this.wanted && !this.expecting) {
      this.devices.stop();
      return;
    }
    this.problem = camera === 'ok' && microphone === 'ok' ? null : deviceProblem(camera, microphone);
    if (this.problem) this.say(this.problem);
    else if (this.media.state === 'connected') this.#sayInCall();
    this.#render();
  }

  #releaseDevices() {
    if (this.screen) {
      this.screen.stop();
      this.screen = null;
    }
    if (this.devices.stream.getTracks().length) this.devices.stop();
    this.self.clear();
  }

  /** What is sent now, for the others: the microphone; the screen, else the camera. */
  #sendState() {
    const { audio, video } = this.devices.sending;
    this.media.setLocalState({ audio, video: video || !!this.screen, screen: !!this.screen });
  }

  /** Sends the screen while sharing, else the camera (or nothing). */
  async #sendVideo() {
    try {
      await this.media.replaceTrack('video', this.screen || this.devices.cameraTrack || null);
    } catch (e) {
      console.warn('replaceTrack failed', e);
    }
    this.#sendState();
    this.#render();
  }

  #devicesChanged({ kind, track, reason, replaced }) {
    if (kind === 'audio' || !this.screen) {
      this.media.replaceTrack(kind, track).catch((e) => console.warn('replaceTrack failed', e));
    }
    this.#sendState();
    this.#render();
    const what = kind === 'video' ? 'camera' : 'microphone';
    if (reason === 'lost') {
      this.say(replaced ? `Your ${what} was disconnected. Using your other ${what}.` : `Your ${what} was disconnected, and there is no other: the patient cannot ${kind === 'video' ? 'see' : 'hear'} you.`);
    } else if (reason === 'default') {
      this.say('Now using the microphone you plugged in.');
    }
  }

  #onMediaState({ state, consultation, reason, retryable, error }) {
    switch (state) {
      case 'joining':
        this.say('Connecting the call…');
        break;
      case 'connecting':
        this.say('Connecting the call…');
        // A new session starts from `localStream` (the camera): a shared screen goes back in.
        if (this.screen) this.#sendVideo();
        break;
      case 'connected':
        this.retry.succeeded();
        this.quality.start();
        this.reporter.start();
        this.#sayInCall();
        break;
      case 'reconnecting':
        this.say('The connection was interrupted. Reconnecting…');
        break;
      case 'ended':
        this.quality.stop();
        this.reporter.stop();
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
    if (this.problem) {
      this.say(this.problem);
      return;
    }
    const n = this.tiles.count;
    this.say(
      n === 0
        ? 'Connected. Waiting for the patient’s video…'
        : `In the call: you can see and hear ${n === 1 ? 'one other person' : `${n} other people`}.`,
    );
  }

  #addRemote(stream) {
    this.tiles.add(stream, this.media.peerState(stream.id));
    this.#sayInCall();
    this.onChange();
  }

  #removeRemote(stream) {
    this.tiles.remove(stream);
    this.#sayInCall();
    this.onChange();
  }

  /** The labels and states of the call's own controls, and the self view. */
  #render() {
    const { mic, cam, switchCam, share, devicesOn, leave, rejoin } = this.ui;
    const d = this.devices;
    this.self.show({
      track: this.screen || d.cameraTrack,
      screen: !!this.screen,
      mirrored: d.facing !== 'environment',
      muted: d.muted && !!d.micTrack,
      offText: d.started ? undefined : 'Camera not turned on yet',
    });
    mic.setAttribute('aria-pressed', String(d.muted));
    cam.setAttribute('aria-pressed', String(d.cameraOff));
    share.setAttribute('aria-pressed', String(!!this.screen));
    mic.disabled = d.started && !d.micTrack;
    // In sound only the camera stays off until video comes back.
    cam.disabled = this.soundOnly.active || (d.started && !d.cameraTrack && !d.cameraOff && !d.hidden);
    share.disabled = !['connecting', 'connected'].includes(this.media.state);
    devicesOn.hidden = d.started && !this.starting;
    const left = this.wanted !== null && this.noRejoin === this.wanted;
    leave.hidden = left;
    rejoin.hidden = !left;
    leave.disabled = !this.media.active;
    if (d.started) d.canSwitch().then((can) => (switchCam.hidden = !can || !!this.screen));
    else switchCam.hidden = true;
    this.#renderSoundOnly();
    this.onChange();
  }

  #renderQuality(level) {
    this.ui.quality.dataset.level = level;
    this.ui.qualityText.textContent = QUALITY_TEXT[level];
  }

  /** The sound-only notice (the offer, this page's own choice, or the whole call's), said. */
  #renderSoundOnly() {
    const text = this.soundOnly.draw(this.media.active);
    if (text) this.say(text);
  }
}

function deviceProblem(camera, microphone) {
  const missing = camera !== 'ok' && microphone !== 'ok' ? 'both' : camera !== 'ok' ? 'camera' : 'mic';
  const what = { both: 'camera and microphone', camera: 'camera', mic: 'microphone' }[missing];
  const effect = {
    both: 'The patient can neither see nor hear you.',
    camera: 'The patient can hear you but not see you.',
    mic: 'The patient can see you but not hear you.',
  }[missing];
  const states = [camera, microphone];
  if (states.includes('blocked')) {
    return `The browser blocked your ${what}. ${effect} Allow them for this site (the camera icon in the address bar), then choose “Leave video” and “Rejoin video”.`;
  }
  if (states.includes('busy')) {
    return `Your ${what} is in use by another program. ${effect} Close that program, then leave and rejoin the video.`;
  }
  return `No ${what} was found. ${effect}`;
}
