// The patient's call screen and media: the MediaSession joined whenever the server says
// the patient is admitted (no click), the clinic's tiles (saying when someone is muted,
// has their camera off or shares a screen), the self view and a plain line saying when
// the patient is muted or has their camera off, mute / camera / switch camera, the
// camera and microphone following the page and the devices (devices.js), the
// connection-quality indicator, and sound only (sound-only.js: when staff switch the
// call, or offered when the patient's link stays too weak for video).

import { $, app, announce, note } from './patient-app.js';
import { Backoff, MOVED_END_REASONS, MediaSession } from './media.js';
import { PathReporter } from './media-path.js';
import { SelfView, Tiles } from './tiles.js';
import { QualityMonitor, QualityReporter, QUALITY_TEXT } from './quality.js';
import { SoundOnly } from './sound-only.js';
import { DEVICE_EVENTS, PEER_WORDS, SELF } from './patient-words.js';

const RETRY_JOIN_CODES = new Set(['unavailable', 'conflict', 'internal', 'rate_limited']);

export const media = new MediaSession({
  send: (msg) => {
    note('out', msg);
    return app.sig?.send(msg);
  },
  localStream: null,
  onRemoteStream,
  onRemoteStreamRemoved,
  onState: onMediaState,
  onPeerState: (stream, state) => tiles.set(stream, state),
});

export const soundOnly = new SoundOnly({ devices: () => app.devices, media, onChange: renderSoundOnly });

export const quality = new QualityMonitor(media, onQuality, {
  expectsVideo: () => media.receiveVideo && media.anyPeerVideo(),
  sendsVideo: () => !!app.devices.cameraTrack && !app.devices.cameraOff,
  onVideoWeak: (weak) => soundOnly.videoWeak(weak),
});

/** Tells the server how the call's media flows, for the clinic's staff to see. */
const paths = new PathReporter(media, (msg) => {
  note('out', msg);
  return app.sig?.send(msg);
});
paths.start();

/** Tells the server how the call goes, for the clinic's support desk (no media, no names). */
const reporter = new QualityReporter(
  media,
  (msg) => {
    note('out', msg);
    return app.sig?.send(msg);
  },
  () => ({ path: paths.sent, audioOnlyMs: soundOnly.activeMs }),
);

const joinRetry = new Backoff(() => reconcile()); // joins the call again after a failure

/** Who a tile is, in the words of a page that knows no names. */
const whoIs = (n) => (n === 0 ? 'The clinician' : 'Another person in the call');

const tiles = new Tiles($('remote'), {
  label: (_, n) => (n === 0 ? 'Video from the clinic' : `Video from the clinic (person ${n + 1})`),
  words: { screen: (_, n) => (n === 0 ? PEER_WORDS.screen : 'A screen is being shared') },
  onSoundBlocked: () => announce('Press Tap to turn on sound to hear the clinic.'),
  onPeerChange: (_, now, was, n) => {
    const who = whoIs(n);
    if (was.audio !== now.audio) announce(now.audio ? `${who}'s microphone is on again.` : `${who} has muted their microphone.`);
    if (was.video !== now.video) announce(now.video ? `${who}'s camera is on again.` : `${who} has turned their camera off.`);
    if (was.screen !== now.screen) announce(now.screen ? `${who} is sharing their screen.` : `${who} has stopped sharing their screen.`);
  },
});

const self = new SelfView($('self-figure'));

/** For tests and diagnostics. */
export function callState() {
  return {
    remoteVideos: $('remote').querySelectorAll('video').length,
    tiles: [...$('remote').querySelectorAll('figure.tile')].map((f) => ({ stream: f.dataset.stream, ...tiles.state(f.dataset.stream) })),
    soundBlocked: tiles.soundBlocked,
    callStatus: $('call-status').hidden ? '' : $('call-status').textContent,
    selfState: $('self-state').hidden ? '' : $('self-state').textContent,
    selfView: $('self-figure').dataset.video ?? 'off',
    sent: media.localState,
    path: paths.sent,
    soundOnly: soundOnly.showing,
    receiveVideo: media.receiveVideo,
  };
}

// --- joining -------------------------------------------------------------------------------

function wantedConsultation() {
  return app.status?.state === 'admitted' ? app.status.consultation : null;
}

/** Joins or leaves media so that it matches what the server says (admission connects). */
export function reconcile() {
  const want = wantedConsultation();
  // A suspended session waits for the server's word on resuming it.
  if (media.active && !media.suspended && media.consultation !== want) media.leave();
  if (!want) quality.stop();
  const blocked = app.socket !== 'open' || joinRetry.pending;
  if (want && want !== app.noRejoin && !media.active && !blocked) {
    // Whatever the devices hold now; what they get later is swapped in (replaceTrack).
    media.localStream = app.devices.stream;
    media.setLocalState({ ...app.devices.sending, screen: false });
    media.join(want);
  }
}

/** The call screen as admission shows it. */
export function enterCall() {
  app.joinedOnce = false;
  tiles.remove();
  setCallStatus('The clinician is joining…');
  renderSelf();
  updateSwitch();
}

/** Back to the waiting room: the tiles go (the server ends the media session itself). */
export function leaveCallScreen() {
  tiles.remove();
  quality.stop();
  reporter.stop();
  soundOnly.reset();
}

/** Leaving the call for good (the end): nothing is kept or retried. */
export function endCall() {
  joinRetry.cancel();
  quality.stop();
  reporter.stop();
  soundOnly.reset();
  media.close();
  tiles.remove();
  self.clear();
}

/** The websocket dropped: the media session waits for it (resumed after `welcome`). */
export function dropCall() {
  media.suspend();
  quality.stop();
  reporter.stop();
}

function setCallStatus(text) {
  const el = $('call-status');
  el.textContent = text || '';
  el.hidden = !text;
}

function onMediaState({ state, consultation, reason, retryable, error }) {
  switch (state) {
    case 'joining':
    case 'connecting':
      if (!tiles.count) setCallStatus(app.joinedOnce ? 'Reconnecting the call…' : 'The clinician is joining…');
      break;
    case 'connected':
      joinRetry.succeeded();
      quality.start();
      reporter.start();
      setCallStatus(tiles.count ? '' : 'The clinician is joining…');
      break;
    case 'reconnecting':
      setCallStatus('Reconnecting…');
      announce('The connection was interrupted. Reconnecting.');
      break;
    case 'ended':
      quality.stop();
      reporter.stop();
      if (retryable) {
        if (reason === 'node_moved') {
          setCallStatus('Moving your call to another server…');
          announce('Moving your call to another server. Please wait.');
        } else {
          setCallStatus('The call connection was lost. Reconnecting…');
          announce('The call connection was lost. Reconnecting.');
        }
        // A media server that stopped or is being taken out of service: the call
        // moves to another at once.
        if (MOVED_END_REASONS.has(reason)) joinRetry.soon();
        else joinRetry.later();
      } else if (reason === 'removed_from_consultation' || reason === 'consultation_ended') {
        // patient_status says what comes next (back to waiting, or the end).
      } else {
        app.noRejoin = consultation;
      }
      break;
    case 'failed':
      if (RETRY_JOIN_CODES.has(error?.code)) {
        setCallStatus('The call could not be connected yet. Trying again…');
        joinRetry.later();
      } else {
        app.noRejoin = consultation;
        setCallStatus('The call could not be connected. Please contact the clinic.');
        announce('The call could not be connected. Please contact the clinic.');
      }
      break;
  }
}

function onRemoteStream(stream) {
  tiles.add(stream, media.peerState(stream.id));
  setCallStatus('');
  if (!app.joinedOnce) {
    app.joinedOnce = true;
    announce('The clinician has joined. You are in the call.');
  } else if (tiles.count > 1) {
    announce('Another person has joined the call.');
  }
}

function onRemoteStreamRemoved(stream) {
  tiles.remove(stream);
  if (!tiles.count && app.screen === 'call' && media.active) {
    setCallStatus('Waiting for the clinician…');
  }
}

function onQuality(level, was) {
  const el = $('quality');
  el.dataset.level = level;
  $('quality-text').textContent = QUALITY_TEXT[level];
  if (level === 'poor' && was !== 'none') announce('Your connection is poor. The picture may freeze; sound should carry on.');
  else if (level === 'good' && was === 'poor') announce('Your connection is good again.');
}

// --- the patient's own camera and microphone ------------------------------------------------

/**
 * A change of the devices (devices.js onChange): what is sent follows (no renegotiation),
 * the others are told, the self view and the controls are drawn again.
 */
export function onDevicesChanged({ kind, track, reason, replaced }) {
  media.replaceTrack(kind, track).catch((e) => console.warn('replaceTrack', e));
  media.setLocalState({ ...app.devices.sending, screen: false });
  renderSelf();
  if (['lost', 'default', 'found'].includes(reason)) {
    const key = reason === 'lost' ? `${kind}-${replaced ? 'replaced' : 'missing'}` : `${kind}-${reason}`;
    const text = DEVICE_EVENTS[key];
    if (text) {
      announce(text);
      if (app.screen === 'call') {
        $('device-note').textContent = text;
        $('device-note').hidden = false;
      }
    }
  }
  if (['started', 'lost', 'found', 'switched'].includes(reason)) updateSwitch();
}

/** The self view, the line under the picture, and the controls, as the devices are now. */
export function renderSelf() {
  const d = app.devices;
  self.show({
    track: d.cameraTrack,
    mirrored: d.facing !== 'environment',
    muted: d.muted && !!d.micTrack,
    offText: d.started ? undefined : 'Camera not turned on yet',
  });
  const lines = [];
  if (!d.started) lines.push(SELF.notStarted);
  else {
    if (!d.micTrack) lines.push(SELF.noMic);
    else if (d.muted) lines.push(SELF.muted);
    if (d.cameraOff) lines.push(SELF.cameraOff);
    else if (!d.cameraTrack && !d.hidden) lines.push(SELF.noCamera);
  }
  $('self-state').textContent = lines.join(' ');
  $('self-state').hidden = !lines.length;
  $('call-devices').hidden = d.started;
  const mute = $('mute');
  const camera = $('camera');
  mute.disabled = !d.micTrack;
  // In sound only the camera stays off until video comes back (the notice's button).
  camera.disabled = soundOnly.active || !(d.cameraTrack || d.cameraOff || d.hidden);
  mute.setAttribute('aria-pressed', String(d.muted && !!d.micTrack));
  camera.setAttribute('aria-pressed', String(d.cameraOff));
}

// --- sound only -------------------------------------------------------------------------------

soundOnly.attach({ box: $('sound-only'), text: $('sound-only-text'), yes: $('sound-only-yes'), no: $('sound-only-no'), back: $('video-back') });
let wasSoundOnly = false;

/** The sound-only notice (the offer, the patient's own choice, or the clinic's), said. */
function renderSoundOnly() {
  const text = soundOnly.draw();
  if (text) announce(text);
  else if (text === '' && wasSoundOnly) announce('Video is back on.');
  wasSoundOnly = soundOnly.active;
  renderSelf();
}

/** The call's sound-only state, from the patient's status. */
export function setCallSoundOnly(on) {
  soundOnly.setByStaff(on);
}

/** "Switch camera" is offered only where there is more than one camera. */
export async function updateSwitch() {
  const can = app.devices.started && (await app.devices.canSwitch());
  $('switch-camera').hidden = !can;
}

export function toggleMute() {
  const d = app.devices;
  if (!d.micTrack) return;
  d.setMuted(!d.muted);
  announce(d.muted ? 'Your microphone is off. The clinic cannot hear you.' : 'Your microphone is on.');
}

export async function toggleCamera() {
  const d = app.devices;
  const off = !d.cameraOff;
  await d.setCameraOff(off);
  announce(off ? 'Your camera is off. The clinic cannot see you.' : d.cameraTrack ? 'Your camera is on.' : SELF.noCamera);
}

export async function switchCamera() {
  const ok = await app.devices.switchCamera();
  const facing = app.devices.facing;
  announce(!ok ? 'The other camera could not be started.' : facing === 'environment' ? 'Now using your back camera.' : facing === 'user' ? 'Now using your front camera.' : 'Now using your other camera.');
}

