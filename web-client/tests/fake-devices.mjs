// Init scripts for the browser tests of what a phone does to a page (call-devices and
// call-state tests): devices that come and go, two cameras facing opposite ways, and a
// page that is hidden and shown again. Each function runs in the page before its own
// scripts (Playwright's addInitScript), so it must not use anything from this module.

/**
 * Wraps navigator.mediaDevices with cameras and microphones a test controls, as a phone
 * or a laptop with a headset has them: Chromium's fake devices cannot be unplugged, and
 * it has one camera with no facing.
 *   window.__devices.plug({deviceId, kind, label, facing?, color?}, {makeDefault})
 *   window.__devices.unplug(deviceId)   its tracks end (as an unplugged device's do) and
 *                                       `devicechange` fires
 *   window.__devices.calls              every getUserMedia constraint asked for
 * Each camera is a canvas of its own colour (so the other side can tell which one it
 * receives); each microphone is Chromium's fake microphone, tagged with the device.
 * `arg.devices` lists the devices at the start (default: a front and a back camera and a
 * built-in microphone).
 */
export function fakeDevices(arg) {
  const md = navigator.mediaDevices;
  const realGetUserMedia = md.getUserMedia.bind(md);
  const devices = (arg && arg.devices) || [
    { deviceId: 'cam-front', kind: 'videoinput', label: 'Front camera', facing: 'user', color: [220, 40, 40] },
    { deviceId: 'cam-back', kind: 'videoinput', label: 'Back camera', facing: 'environment', color: [40, 170, 40] },
    { deviceId: 'mic-builtin', kind: 'audioinput', label: 'Built-in microphone' },
  ];
  let defaultMic = devices.find((d) => d.kind === 'audioinput')?.deviceId ?? null;
  const live = []; // {track, device}
  const calls = [];

  const entry = (d, deviceId = d.deviceId) => ({
    deviceId,
    kind: d.kind,
    label: deviceId === 'default' ? `Default - ${d.label}` : d.label,
    groupId: `group-${d.deviceId}`,
    toJSON() {
      return { deviceId: this.deviceId, kind: this.kind, label: this.label, groupId: this.groupId };
    },
  });
  const list = () => {
    const out = [];
    const def = devices.find((d) => d.deviceId === defaultMic);
    // Chromium lists a "default" microphone entry first, in the real device's group.
    if (def) out.push(entry(def, 'default'));
    for (const d of devices) out.push(entry(d));
    return out;
  };
  md.enumerateDevices = async () => list();

  const fail = (name, message) => Promise.reject(new DOMException(message, name));
  const exactOf = (v) => (v && typeof v === 'object' ? v.exact : undefined);
  const idealOf = (v) => (v && typeof v === 'object' ? v.ideal : v);

  function pick(kind, c) {
    const of = devices.filter((d) => d.kind === kind);
    if (c === true || c === undefined) c = {};
    const id = exactOf(c.deviceId) ?? (typeof c.deviceId === 'string' ? c.deviceId : undefined);
    if (id) return of.find((d) => d.deviceId === id) ?? null;
    const facing = exactOf(c.facingMode);
    if (facing) return of.find((d) => d.facing === facing) ?? null;
    const want = idealOf(c.facingMode);
    if (kind === 'audioinput') return of.find((d) => d.deviceId === defaultMic) ?? of[0] ?? null;
    return (want && of.find((d) => d.facing === want)) || of[0] || null;
  }

  function cameraTrack(d) {
    const canvas = document.createElement('canvas');
    canvas.width = 320;
    canvas.height = 240;
    const g = canvas.getContext('2d');
    let n = 0;
    const paint = () => {
      g.fillStyle = `rgb(${d.color.join(',')})`;
      g.fillRect(0, 0, 320, 240);
      g.fillStyle = '#fff';
      g.fillRect((n++ * 8) % 320, 0, 8, 24); // a moving mark: the encoder sends frames
    };
    paint();
    const timer = setInterval(paint, 66);
    const track = canvas.captureStream(15).getVideoTracks()[0];
    const stop = track.stop.bind(track);
    track.stop = () => {
      clearInterval(timer);
      stop();
    };
    return track;
  }

  function tag(track, d) {
    const real = track.getSettings.bind(track);
    track.getSettings = () => ({ ...real(), deviceId: d.deviceId, groupId: `group-${d.deviceId}`, ...(d.facing ? { facingMode: d.facing } : {}) });
    track.__device = d.deviceId;
    live.push({ track, device: d.deviceId });
    return track;
  }

  md.getUserMedia = async (c) => {
    calls.push(JSON.parse(JSON.stringify(c ?? {})));
    const stream = new MediaStream();
    if (c?.video) {
      const d = pick('videoinput', c.video);
      if (!d) return fail('OverconstrainedError', 'no such camera');
      stream.addTrack(tag(cameraTrack(d), d));
    }
    if (c?.audio) {
      const d = pick('audioinput', c.audio);
      if (!d) {
        for (const t of stream.getTracks()) t.stop();
        return fail('NotFoundError', 'no such microphone');
      }
      const real = (await realGetUserMedia({ audio: true })).getAudioTracks()[0];
      stream.addTrack(tag(real, d));
    }
    return stream;
  };

  window.__devices = {
    calls,
    live,
    plug(d, { makeDefault = false } = {}) {
      devices.push(d);
      if (d.kind === 'audioinput' && (makeDefault || !defaultMic)) defaultMic = d.deviceId;
      md.dispatchEvent(new Event('devicechange'));
    },
    unplug(deviceId) {
      const i = devices.findIndex((d) => d.deviceId === deviceId);
      if (i >= 0) devices.splice(i, 1);
      if (defaultMic === deviceId) defaultMic = devices.find((d) => d.kind === 'audioinput')?.deviceId ?? null;
      for (const { track, device } of live) {
        if (device === deviceId && track.readyState === 'live') {
          track.stop();
          track.dispatchEvent(new Event('ended')); // what an unplugged device's track does
        }
      }
      md.dispatchEvent(new Event('devicechange'));
    },
    /** The devices' tracks still capturing (a camera's light is on while one is). */
    capturing() {
      return live.filter((x) => x.track.readyState === 'live').map((x) => x.device);
    },
  };
}

/**
 * A page whose visibility a test sets: `window.__setVisibility('hidden' | 'visible')`
 * changes document.visibilityState / document.hidden and fires `visibilitychange`, as a
 * phone does when its browser goes to the background and comes back. (Headless Chromium
 * keeps every page visible: a tab brought in front of it does not hide it, and the
 * DevTools protocol's Page.setWebLifecycleState freezes the page's scripts instead.)
 */
export function fakeVisibility() {
  let state = 'visible';
  Object.defineProperty(Document.prototype, 'visibilityState', { configurable: true, get: () => state });
  Object.defineProperty(Document.prototype, 'hidden', { configurable: true, get: () => state === 'hidden' });
  window.__setVisibility = (s) => {
    state = s;
    document.dispatchEvent(new Event('visibilitychange'));
  };
}

/**
 * Counts getUserMedia calls (`window.__gumCalls`), without changing what it does: the
 * pages must ask for camera and microphone only after a press.
 */
export function countGetUserMedia() {
  const md = navigator.mediaDevices;
  const real = md.getUserMedia.bind(md);
  window.__gumCalls = 0;
  md.getUserMedia = (c) => {
    window.__gumCalls += 1;
    return real(c);
  };
}

/**
 * In a page: the colour in the middle of the first remote video, as [r, g, b] (null
 * before a frame), to tell which camera the other side is sending.
 */
export function remoteColour() {
  const v = document.querySelector('#remote video');
  if (!v || !v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth;
  c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  const d = g.getImageData(Math.floor(c.width / 2), Math.floor(c.height * 0.75), 1, 1).data;
  return [d[0], d[1], d[2]];
}

/**
 * Sound only after a press, as iOS Safari allows it: play() of an element with sound is
 * refused (NotAllowedError) until the page has had a real press (a trusted pointer or key
 * event). Chromium's own --autoplay-policy cannot show this under Playwright, whose
 * page.evaluate() runs as a user gesture (the page then counts as pressed).
 */
export function soundAfterPress() {
  let pressed = false;
  for (const type of ['pointerdown', 'keydown', 'touchend']) {
    addEventListener(type, (e) => {
      if (e.isTrusted) pressed = true;
    }, true);
  }
  const play = HTMLMediaElement.prototype.play;
  HTMLMediaElement.prototype.play = function playAfterPress() {
    if (!this.muted && !pressed) {
      this.pause();
      return Promise.reject(new DOMException('play() with sound needs a press first', 'NotAllowedError'));
    }
    return play.call(this);
  };
}
