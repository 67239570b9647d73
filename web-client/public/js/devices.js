// The camera and microphone of one page, as every page uses them (patient, staff, call):
// asked for only from a button press, and kept right for the rest of the page's life.
//
// - One MediaStream (`stream`) holds what is sent: at most one microphone track and one
//   camera track. Tracks come and go; the page hands each change to
//   MediaSession.replaceTrack (no renegotiation) and redraws its self view.
// - The camera is given back while the page is hidden (a phone's other app, a closed
//   laptop lid, another tab): the track is stopped, the light goes off, nothing is sent;
//   it is taken again when the page shows. iOS Safari stops it by itself and leaves a
//   frozen picture behind if the page does not.
// - "Camera off" stops the camera too (the light goes off); "Mute" disables the
//   microphone track (silence is sent; unmuting is instant).
// - A device unplugged mid-call (its track ends, or `devicechange` no longer lists it)
//   is replaced by another of its kind if there is one; a new default microphone (a
//   headset plugged in) is taken up; a device of a kind that was missing is taken when
//   one appears.
// - The front/back switch of a phone: `facingMode` user <-> environment where the
//   browser says which way the camera faces, else the next camera in the list.
//
// Nothing here touches the DOM. Every change is reported to `onChange(change)`:
//   {kind: 'audio'|'video', track: MediaStreamTrack|null, reason}
// reason: started | hidden | visible | camera-off | camera-on | switched | chosen |
//         lost (unplugged; `replaced` says whether another device took over) | default |
//         found | muted | unmuted | stopped

/** What we ask the camera for: enough for a consultation, light on a poor uplink. */
export const VIDEO = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24, max: 30 } };
export const AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

/** Why a device cannot be used, from a getUserMedia error. */
export function deviceProblem(e) {
  switch (e?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
    case 'PermissionDeniedError':
      return 'blocked';
    case 'NotFoundError':
    case 'OverconstrainedError':
    case 'DevicesNotFoundError':
      return 'missing';
    case 'NotReadableError':
    case 'AbortError':
    case 'TrackStartError':
      return 'busy';
    default:
      return 'error';
  }
}

/** The cameras and microphones the browser lists (labels once permission is given). */
export async function listDevices() {
  try {
    const all = await navigator.mediaDevices.enumerateDevices();
    // Without the "default" and "communications" entries, which repeat a real device.
    const real = (d) => d.deviceId && d.deviceId !== 'default' && d.deviceId !== 'communications';
    return {
      all,
      cameras: all.filter((d) => d.kind === 'videoinput' && real(d)),
      microphones: all.filter((d) => d.kind === 'audioinput' && real(d)),
    };
  } catch {
    return { all: [], cameras: [], microphones: [] };
  }
}

/**
 * Which microphone the system uses by default: Chromium lists a "default" entry (whose
 * group is the real device's); Firefox and Safari list the default first.
 */
function defaultMicrophone(all) {
  const mics = all.filter((d) => d.kind === 'audioinput');
  const entry = mics.find((d) => d.deviceId === 'default');
  if (entry) return mics.find((d) => d !== entry && d.groupId === entry.groupId && d.deviceId !== 'communications') ?? null;
  return mics[0] ?? null;
}

const settings = (track) => (track?.getSettings ? track.getSettings() : {});

export class LocalDevices {
  /** What is sent: at most one audio and one video track. */
  stream = new MediaStream();
  /** Each device's state: off (not asked yet) | ok | blocked | missing | busy | error | unsupported. */
  camera = 'off';
  microphone = 'off';
  /** The person's choices. */
  muted = false;
  cameraOff = false;
  /** The camera was given back because the page is hidden. */
  hidden = false;
  /** The person has pressed the button that asks for the devices (in this page's life). */
  started = false;

  #queue = Promise.resolve(); // device operations, one at a time
  #cameraId = null; // the camera in use (or last used), to take the same one again
  #facing = null; // ... and which way it faces, where the browser says
  #micId = null;
  #defaultMic = undefined; // the system's default microphone when last looked
  #releaseWhenHidden;
  #onVisibility = () => this.#visibility();
  #onDeviceChange = () => this.#run(() => this.#devicesChanged());

  /**
   * @param {object} o
   * @param {(change: {kind: string, track: MediaStreamTrack|null, reason: string,
   *                   replaced?: boolean}) => void} o.onChange
   * @param {() => boolean} [o.releaseWhenHidden]  whether to give the camera back while
   *        the page is hidden (asked each time; default: always)
   */
  constructor({ onChange, releaseWhenHidden = () => true }) {
    this.onChange = onChange || (() => {});
    this.#releaseWhenHidden = releaseWhenHidden;
    document.addEventListener('visibilitychange', this.#onVisibility);
    navigator.mediaDevices?.addEventListener?.('devicechange', this.#onDeviceChange);
  }

  get cameraTrack() {
    return this.stream.getVideoTracks()[0] ?? null;
  }

  get micTrack() {
    return this.stream.getAudioTracks()[0] ?? null;
  }

  /** Which way the camera in use faces: 'user', 'environment' or null (not said). */
  get facing() {
    return this.#facing;
  }

  /** What this page sends, for MediaSession.setLocalState (a screen is the page's own). */
  get sending() {
    const mic = this.micTrack;
    const cam = this.cameraTrack;
    return {
      audio: !!mic && mic.readyState === 'live' && mic.enabled,
      video: !!cam && cam.readyState === 'live' && cam.enabled,
    };
  }

  /**
   * Opens the camera and microphone: call it from a button press (browsers, iOS Safari
   * first, ask for them only after a gesture). Resolves with each device's state; what
   * could be opened is in `stream`. `cameraId` / `micId` ask for a particular device.
   */
  start({ cameraId, micId } = {}) {
    this.started = true;
    return this.#run(async () => {
      this.#stopTracks();
      const got = await openDevices({
        video: this.cameraOff ? false : videoConstraints(cameraId),
        audio: audioConstraints(micId),
      });
      this.microphone = got.microphone;
      if (!this.cameraOff) this.camera = got.camera;
      if (got.audio) this.#adoptMic(got.audio);
      if (got.video) this.#adoptCamera(got.video);
      this.#defaultMic = defaultMicrophone((await listDevices()).all)?.deviceId ?? null;
      // The page may have been hidden while the browser asked.
      if (document.visibilityState === 'hidden' && got.video && this.#releaseWhenHidden()) this.#hideCamera();
      this.onChange({ kind: 'audio', track: this.micTrack, reason: 'started' });
      this.onChange({ kind: 'video', track: this.cameraTrack, reason: 'started' });
      return { camera: this.camera, microphone: this.microphone };
    });
  }

  /** Uses the device `deviceId` for `kind` ('video' or 'audio'); resolves with its state. */
  use(kind, deviceId) {
    return this.#run(() => this.#open(kind, deviceId, 'chosen'));
  }

  setMuted(on) {
    this.muted = on;
    const mic = this.micTrack;
    if (mic) mic.enabled = !on;
    this.onChange({ kind: 'audio', track: mic, reason: on ? 'muted' : 'unmuted' });
  }

  /** Turns the camera off (the track is stopped: the light goes off) or on again. */
  setCameraOff(on) {
    this.cameraOff = on;
    return this.#run(async () => {
      if (on) {
        this.#dropCamera();
        this.onChange({ kind: 'video', track: null, reason: 'camera-off' });
      } else if (!this.cameraTrack && !this.hidden) {
        await this.#open('video', this.#cameraId, 'camera-on');
      }
    });
  }

  /** Whether there is more than one camera to switch between. */
  async canSwitch() {
    return (await listDevices()).cameras.length > 1;
  }

  /**
   * The next camera: on a phone the other side (front <-> back), else the next one in
   * the browser's list. The one in use is stopped first (phones cannot open both).
   */
  switchCamera() {
    return this.#run(async () => {
      if (this.cameraOff || this.hidden) return false;
      const { cameras } = await listDevices();
      if (cameras.length < 2) return false;
      const was = { id: this.#cameraId, facing: this.#facing };
      this.#dropCamera();
      let track = null;
      if (was.facing === 'user' || was.facing === 'environment') {
        const other = was.facing === 'user' ? 'environment' : 'user';
        track = await openTrack({ video: { ...VIDEO, facingMode: { exact: other } } });
      }
      if (!track) {
        const i = cameras.findIndex((c) => c.deviceId === was.id);
        const next = cameras[(i + 1) % cameras.length];
        track = await openTrack({ video: videoConstraints(next.deviceId) });
      }
      if (!track) track = await openTrack({ video: videoConstraints(was.id) }); // back to the one we had
      if (track) {
        this.camera = 'ok';
        this.#adoptCamera(track);
      } else {
        this.camera = 'error';
      }
      this.onChange({ kind: 'video', track, reason: 'switched' });
      return !!track;
    });
  }

  /** Stops everything (the call is over, the person left). */
  stop() {
    this.#stopTracks();
    this.hidden = false;
    this.onChange({ kind: 'video', track: null, reason: 'stopped' });
    this.onChange({ kind: 'audio', track: null, reason: 'stopped' });
  }

  // --- internals ------------------------------------------------------------------------------

  #run(fn) {
    const next = this.#queue.then(fn);
    this.#queue = next.catch((e) => console.warn('devices:', e));
    return next;
  }

  #stopTracks() {
    for (const t of this.stream.getTracks()) {
      this.stream.removeTrack(t);
      t.stop();
    }
  }

  #dropCamera() {
    for (const t of this.stream.getVideoTracks()) {
      this.stream.removeTrack(t);
      t.stop();
    }
  }

  #adoptCamera(track) {
    this.#dropCamera();
    const s = settings(track);
    this.#cameraId = s.deviceId || this.#cameraId;
    this.#facing = s.facingMode === 'user' || s.facingMode === 'environment' ? s.facingMode : null;
    track.addEventListener('ended', () => {
      if (this.cameraTrack === track) this.#run(() => this.#lost('video', track));
    });
    this.stream.addTrack(track);
  }

  #adoptMic(track) {
    for (const t of this.stream.getAudioTracks()) {
      this.stream.removeTrack(t);
      t.stop();
    }
    track.enabled = !this.muted;
    this.#micId = settings(track).deviceId || this.#micId;
    track.addEventListener('ended', () => {
      if (this.micTrack === track) this.#run(() => this.#lost('audio', track));
    });
    this.stream.addTrack(track);
  }

  /** Opens `deviceId` (or the default) for `kind` in place of what is there. */
  async #open(kind, deviceId, reason) {
    if (kind === 'video') {
      this.#dropCamera(); // a phone cannot open a second camera while one is open
      let r = await openOne({ video: videoConstraints(deviceId) });
      if (!r.track && deviceId && r.state === 'missing') r = await openOne({ video: videoConstraints() }); // gone: any camera
      this.camera = r.state;
      if (r.track) this.#adoptCamera(r.track);
      this.onChange({ kind, track: r.track, reason });
      return r.state;
    }
    const r = await openOne({ audio: audioConstraints(deviceId) });
    this.microphone = r.state;
    if (r.track) this.#adoptMic(r.track);
    else if (r.state !== 'ok') this.#dropMic();
    this.onChange({ kind, track: r.track, reason });
    return r.state;
  }

  #dropMic() {
    for (const t of this.stream.getAudioTracks()) {
      this.stream.removeTrack(t);
      t.stop();
    }
  }

  #hideCamera() {
    this.hidden = true;
    this.#dropCamera();
  }

  #visibility() {
    if (document.visibilityState === 'hidden') {
      if (!this.cameraTrack || !this.#releaseWhenHidden()) return;
      this.#run(async () => {
        if (document.visibilityState !== 'hidden' || !this.cameraTrack) return;
        this.#hideCamera();
        this.onChange({ kind: 'video', track: null, reason: 'hidden' });
      });
    } else {
      this.#run(async () => {
        if (!this.hidden || document.visibilityState === 'hidden') return;
        this.hidden = false;
        if (this.cameraOff) return;
        let r = await openOne({ video: videoConstraints(this.#cameraId) });
        if (!r.track) r = await openOne({ video: videoConstraints() }); // that camera went away meanwhile
        this.camera = r.state;
        if (r.track) this.#adoptCamera(r.track);
        this.onChange({ kind: 'video', track: r.track, reason: 'visible' });
      });
    }
  }

  /** A device of `kind` went away (unplugged, or taken by the system): use another. */
  async #lost(kind, track) {
    const current = kind === 'video' ? this.cameraTrack : this.micTrack;
    if (current !== track) return;
    if (kind === 'video') this.#dropCamera();
    else this.#dropMic();
    const { cameras, microphones } = await listDevices();
    const gone = settings(track).deviceId;
    const others = (kind === 'video' ? cameras : microphones).filter((d) => d.deviceId !== gone);
    let r = { track: null, state: 'missing' };
    for (const d of others) {
      r = await openOne(kind === 'video' ? { video: videoConstraints(d.deviceId) } : { audio: audioConstraints(d.deviceId) });
      if (r.track) break;
    }
    if (!others.length) r.state = 'missing';
    if (kind === 'video') {
      this.camera = r.state;
      if (r.track) this.#adoptCamera(r.track);
    } else {
      this.microphone = r.state;
      if (r.track) this.#adoptMic(r.track);
    }
    this.onChange({ kind, track: r.track, reason: 'lost', replaced: !!r.track });
  }

  /** `devicechange`: a device plugged in or out. */
  async #devicesChanged() {
    if (!this.started) return;
    const { all, cameras, microphones } = await listDevices();
    // Unplugged: some browsers end the track, others only list the devices anew.
    const cam = this.cameraTrack;
    if (cam && settings(cam).deviceId && !cameras.some((d) => d.deviceId === settings(cam).deviceId)) {
      await this.#lost('video', cam);
    }
    const mic = this.micTrack;
    if (mic && settings(mic).deviceId && !microphones.some((d) => d.deviceId === settings(mic).deviceId)) {
      await this.#lost('audio', mic);
    }
    // A new default microphone (a headset plugged in): use it.
    const def = defaultMicrophone(all)?.deviceId ?? null;
    const was = this.#defaultMic;
    this.#defaultMic = def;
    if (def && was !== undefined && def !== was && settings(this.micTrack).deviceId !== def) {
      await this.#open('audio', def, 'default');
    } else if (!this.micTrack && microphones.length) {
      await this.#open('audio', undefined, 'found');
    }
    // A camera where there was none (and the person wants one).
    if (!this.cameraTrack && !this.cameraOff && !this.hidden && cameras.length && this.camera !== 'blocked') {
      await this.#open('video', undefined, 'found');
    }
  }
}

function videoConstraints(deviceId) {
  return deviceId ? { ...VIDEO, deviceId: { exact: deviceId } } : { ...VIDEO, facingMode: 'user' };
}

function audioConstraints(deviceId) {
  return deviceId ? { ...AUDIO, deviceId: { exact: deviceId } } : AUDIO;
}

/** One track, or null (the reason logged). */
async function openTrack(constraints) {
  return (await openOne(constraints)).track;
}

/** One kind of device: {track, state}. */
async function openOne(constraints) {
  if (!navigator.mediaDevices?.getUserMedia) return { track: null, state: 'unsupported' };
  try {
    const s = await navigator.mediaDevices.getUserMedia(constraints);
    const track = s.getTracks()[0] ?? null;
    return { track, state: track ? 'ok' : 'missing' };
  } catch (e) {
    console.warn(`getUserMedia (${constraints.video ? 'camera' : 'microphone'}):`, e.name);
    return { track: null, state: deviceProblem(e) };
  }
}

/**
 * Both devices at once (one prompt), else each on its own (a blocked camera, no
 * microphone, ...). Resolves (never rejects) with the tracks and each device's state.
 */
async function openDevices({ video, audio }) {
  const out = { audio: null, video: null, camera: video ? 'unsupported' : 'ok', microphone: 'unsupported' };
  if (!navigator.mediaDevices?.getUserMedia) return out;
  try {
    const s = await navigator.mediaDevices.getUserMedia({ video, audio });
    out.audio = s.getAudioTracks()[0] ?? null;
    out.video = s.getVideoTracks()[0] ?? null;
    out.microphone = out.audio ? 'ok' : 'missing';
    if (video) out.camera = out.video ? 'ok' : 'missing';
    return out;
  } catch (both) {
    console.warn('getUserMedia (camera and microphone):', both.name);
  }
  const mic = await openOne({ audio });
  out.audio = mic.track;
  out.microphone = mic.state;
  if (video) {
    const cam = await openOne({ video });
    out.video = cam.track;
    out.camera = cam.state;
  }
  return out;
}
