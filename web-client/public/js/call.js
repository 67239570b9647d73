// The call page: one person (a patient or a clinician) in a video consultation.
//
// The credential comes in the URL fragment (`call.html#token=...`), which browsers never
// send to a server; the page moves it to sessionStorage (a reload resumes) and takes it
// out of the address bar. Then:
//   - it opens the websocket and says hello; the camera and microphone are asked for only
//     when the person presses "Turn on camera and microphone" (devices.js), and until
//     then a call receives but sends nothing;
//   - a patient joins the call's media as soon as their status says `admitted`;
//   - a clinician joins the media of the consultation they lead as soon as one appears
//     in their clinic's snapshot or updates;
//   - if the websocket closes it reconnects (signalling.js, as every page) and says hello
//     again (the server sends the current state again, and the call is joined anew);
//   - each other participant's tile says when they are muted, have their camera off or
//     share a screen (tiles.js); the self view shows what is sent.
//
// `window.consultCall` exposes the state and the media figures to tests.

import { Backoff, MOVED_END_REASONS, MediaSession } from './media.js';
import { PathReporter } from './media-path.js';
import { Signalling } from './signalling.js';
import { LocalDevices } from './devices.js';
import { SelfView, Tiles } from './tiles.js';

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'),
  who: $('who'),
  remote: $('remote'),
  devicesOn: $('devices-on'),
  mute: $('mute'),
  camera: $('camera'),
  switchCamera: $('switch-camera'),
  leave: $('leave'),
  rejoin: $('rejoin'),
};

const TOKEN_KEY = 'consult.call.token';
/** Error codes after which saying hello again cannot help. */
const FATAL_CODES = new Set(['unauthenticated', 'token_expired', 'forbidden', 'visit_ended', 'not_found']);
/** Error codes of a refused join_media after which trying again later may work. */
const RETRY_JOIN_CODES = new Set(['unavailable', 'conflict', 'internal', 'rate_limited']);

const app = {
  token: takeToken(),
  session: null, // the welcome's session: {kind: 'staff', username, ...} or {kind: 'patient', ...}
  patientStatus: null, // patient: the last patient_status's status
  consultations: new Map(), // staff: consultation id -> {clinic, view}
  socket: 'closed', // closed | connecting | open
  fatal: false, // no more reconnecting (bad credential, visit over)
  noRejoin: null, // a consultation whose media ended for good (or that the user left)
  mediaEndReason: null,
  callEnded: false,
  joinRetry: new Backoff(() => reconcile()), // joins again after a failure
  messages: [], // a short log of message types, for tests and diagnostics (no SDP, no tokens)
};

const devices = new LocalDevices({ onChange: onDevicesChanged });

const media = new MediaSession({
  send,
  localStream: devices.stream,
  onRemoteStream: addRemoteVideo,
  onRemoteStreamRemoved: removeRemoteVideo,
  onState: onMediaState,
  onPeerState: (stream, state) => tiles.set(stream, state),
});
// Tells the server how this page's media flows, for staff to see.
const paths = new PathReporter(media, send);
paths.start();

const tiles = new Tiles(ui.remote, {
  label: () => 'Video of another participant',
  onPeerChange: (_, now, was) => {
    if (was.audio !== now.audio) say(now.audio ? 'The other person’s microphone is on again.' : 'The other person has muted their microphone.');
    if (was.video !== now.video) say(now.video ? 'The other person’s camera is on again.' : 'The other person has turned their camera off.');
    if (was.screen !== now.screen) say(now.screen ? 'A screen is being shared.' : 'The screen is no longer shared.');
  },
});
const self = new SelfView($('self-figure'));

window.consultCall = {
  stats: () => media.stats(),
  state: () => ({
    socket: app.socket,
    role: app.session?.kind === 'staff' ? app.session.role : app.session?.kind ?? null,
    patient: app.patientStatus?.state ?? null,
    consultation: wantedConsultation(),
    media: media.state,
    mediaEndReason: app.mediaEndReason,
    callEnded: app.callEnded,
    remoteVideos: ui.remote.querySelectorAll('video').length,
    tiles: [...ui.remote.querySelectorAll('figure.tile')].map((f) => ({ stream: f.dataset.stream, ...tiles.state(f.dataset.stream) })),
    soundBlocked: tiles.soundBlocked,
    devices: { started: devices.started, camera: devices.camera, microphone: devices.microphone, muted: devices.muted, cameraOff: devices.cameraOff, hidden: devices.hidden, tracks: devices.stream.getTracks().length, cameraDevice: devices.cameraTrack?.getSettings().deviceId ?? null, micDevice: devices.micTrack?.getSettings().deviceId ?? null, facing: devices.facing },
    selfView: $('self-figure').dataset.video ?? 'off',
    sent: media.localState,
    path: paths.sent,
    status: ui.status.textContent,
  }),
  messages: () => app.messages.slice(),
};

ui.leave.addEventListener('click', () => {
  app.noRejoin = media.consultation;
  media.leave();
  say('You left the call. You can rejoin while the consultation lasts.');
  ui.rejoin.hidden = false;
  ui.rejoin.focus();
});
ui.rejoin.addEventListener('click', () => {
  app.noRejoin = null;
  ui.rejoin.hidden = true;
  reconcile();
});
ui.devicesOn.addEventListener('click', startDevices);
ui.mute.addEventListener('click', () => {
  devices.setMuted(!devices.muted);
  say(devices.muted ? 'Your microphone is off.' : 'Your microphone is on.');
});
ui.camera.addEventListener('click', async () => {
  const off = !devices.cameraOff;
  await devices.setCameraOff(off);
  say(off ? 'Your camera is off.' : 'Your camera is on.');
});
ui.switchCamera.addEventListener('click', async () => {
  const ok = await devices.switchCamera();
  say(ok ? 'Now using your other camera.' : 'The other camera could not be started.');
});

// --- credential, status, diagnostics ------------------------------------------------------

function takeToken() {
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fromUrl) {
    try {
      sessionStorage.setItem(TOKEN_KEY, fromUrl);
    } catch {
      // storage refused (private mode): a reload will need the link again
    }
    history.replaceState(null, '', location.pathname + location.search);
    return fromUrl;
  }
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function say(text) {
  if (ui.status.textContent !== text) ui.status.textContent = text;
}

/** Keeps the type and a few plain fields of each message; never SDP, candidates or tokens. */
function note(dir, msg) {
  const entry = { dir, type: msg.type, at: Date.now() };
  for (const k of ['reason', 'connected', 'code', 'leg', 'consultation']) {
    if (typeof msg[k] === 'string' || typeof msg[k] === 'boolean') entry[k] = msg[k];
  }
  if (msg.status?.state) entry.state = msg.status.state;
  app.messages.push(entry);
  if (app.messages.length > 2000) app.messages.shift();
}

// --- camera and microphone ----------------------------------------------------------------

/** "Turn on camera and microphone": the press lets the browser ask for them. */
async function startDevices() {
  ui.devicesOn.disabled = true;
  const { camera, microphone } = await devices.start();
  ui.devicesOn.disabled = false;
  ui.devicesOn.hidden = true;
  if (camera !== 'ok' || microphone !== 'ok') {
    say(
      camera !== 'ok' && microphone !== 'ok'
        ? 'Your camera and microphone are not available. Check the browser’s permissions; others will not see or hear you.'
        : camera !== 'ok'
          ? 'Your camera is not available: others can hear you but not see you.'
          : 'Your microphone is not available: others can see you but not hear you.',
    );
  } else if (media.state === 'connected') {
    sayInCall();
  }
}

/** The devices changed: what is sent follows (no renegotiation), the others are told. */
function onDevicesChanged({ kind, track, reason, replaced }) {
  media.replaceTrack(kind, track).catch((e) => console.warn('replaceTrack', e));
  media.setLocalState({ ...devices.sending, screen: false });
  renderSelf();
  if (reason === 'lost') {
    const what = kind === 'video' ? 'camera' : 'microphone';
    say(replaced ? `Your ${what} was disconnected. Using another ${what}.` : `Your ${what} was disconnected, and there is no other.`);
  } else if (reason === 'default') {
    say('Now using the microphone you plugged in.');
  }
}

function renderSelf() {
  self.show({
    track: devices.cameraTrack,
    mirrored: devices.facing !== 'environment',
    muted: devices.muted && !!devices.micTrack,
    offText: devices.started ? undefined : 'Camera not turned on yet',
  });
  ui.mute.disabled = !devices.micTrack;
  ui.camera.disabled = !(devices.cameraTrack || devices.cameraOff || devices.hidden);
  ui.mute.setAttribute('aria-pressed', String(devices.muted && !!devices.micTrack));
  ui.camera.setAttribute('aria-pressed', String(devices.cameraOff));
  if (devices.started) devices.canSwitch().then((can) => (ui.switchCamera.hidden = !can));
}

// --- websocket ------------------------------------------------------------------------------

// The product's websocket client (signalling.js): hello, reconnection with backoff.
const sig = new Signalling({
  token: app.token,
  onMessage: (msg) => {
    note('in', msg);
    if (!media.handle(msg)) onMessage(msg);
  },
  onState: onSocketState,
});

function onSocketState({ state, fatal }) {
  const was = app.socket;
  app.socket = state === 'open' ? 'open' : state === 'connecting' ? 'connecting' : 'closed';
  if (was === 'open' && app.socket !== 'open') {
    media.suspend(); // kept while the socket comes back (resume() after welcome)
  }
  if (fatal) onFatal(fatal.code);
  else if (state === 'reconnecting' && !app.fatal) say('The connection was interrupted. Reconnecting…');
}

function send(msg) {
  if (sig.send(msg)) note('out', msg);
}

function onMessage(msg) {
  switch (msg.type) {
    case 'welcome':
      media.resume();
      app.session = msg.session;
      app.patientStatus = null;
      app.consultations.clear();
      ui.who.textContent =
        msg.session.kind === 'staff'
          ? `Signed in as ${msg.session.display_name}`
          : `${msg.session.clinic_name}`;
      if (msg.session.kind === 'staff') say('Waiting for a patient to be admitted to your consultation…');
      break;
    case 'patient_status':
      onPatientStatus(msg.status);
      break;
    case 'clinic_snapshot':
      for (const [id, c] of app.consultations) {
        if (c.clinic === msg.clinic.id) app.consultations.delete(id);
      }
      for (const view of msg.consultations) app.consultations.set(view.id, { clinic: msg.clinic.id, view });
      reconcile();
      break;
    case 'consultation_updated':
      app.consultations.set(msg.consultation.id, { clinic: msg.clinic, view: msg.consultation });
      reconcile();
      break;
    case 'consultation_ended':
      app.consultations.delete(msg.consultation);
      if (msg.consultation === media.consultation || msg.consultation === app.noRejoin) {
        endCall('The consultation has ended. Waiting for your next patient…');
      }
      reconcile();
      break;
    case 'staff_message':
      say(`Message from the clinic: ${msg.text}`);
      break;
    case 'error':
      onError(msg);
      break;
    default:
      // visit_updated, visit_closed, ack: nothing to show on this page.
      break;
  }
}

function onError(msg) {
  console.warn('server error', msg.code, msg.message);
  if (!app.session && FATAL_CODES.has(msg.code)) onFatal(msg.code);
}

/** The credential or the visit is over: no more reconnecting. */
function onFatal(code) {
  if (app.fatal) return;
  app.fatal = true;
  // A call that ended keeps saying so when the server then closes the visit's socket.
  if (!app.callEnded) {
    say(
      code === 'token_expired' || code === 'visit_ended'
        ? 'This link has expired or the visit is over. Please contact the clinic.'
        : 'This link is not valid. Please open the link you were given again.',
    );
  }
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // nothing stored
  }
  sig.close();
}

function onPatientStatus(status) {
  app.patientStatus = status;
  if (status.state !== 'admitted') app.noRejoin = null;
  switch (status.state) {
    case 'waiting':
      app.callEnded = false;
      say(`You are in the waiting room of ${status.clinic_name}. The clinic knows you are here; please keep this page open.`);
      break;
    case 'admitted':
      say('You have been admitted. Connecting the call…');
      break;
    case 'ended':
      app.fatal = true; // the visit credential is spent
      devices.stop(); // the camera light goes off
      endCall(
        status.reason === 'consultation_ended'
          ? 'The consultation has ended. Thank you; you can close this page.'
          : 'Your visit has ended. You can close this page.',
      );
      try {
        sessionStorage.removeItem(TOKEN_KEY);
      } catch {
        // nothing stored
      }
      // The socket stays open for what follows (media_ended); the server closes it.
      break;
  }
  reconcile();
}

// --- the media session ----------------------------------------------------------------------

/** The consultation whose media this page should be in now, or null. */
function wantedConsultation() {
  if (app.session?.kind === 'patient') {
    return app.patientStatus?.state === 'admitted' ? app.patientStatus.consultation : null;
  }
  if (app.session?.kind === 'staff') {
    const mine = [...app.consultations.values()]
      .map((c) => c.view)
      .filter((v) => v.clinician === app.session.username)
      .sort((a, b) => a.started_at - b.started_at);
    return (mine.find((v) => v.id === media.consultation) ?? mine[0])?.id ?? null;
  }
  return null;
}

/** Joins or leaves media so that it matches what the server says (admission connects). */
function reconcile() {
  const want = wantedConsultation();
  // A suspended session waits for the server's word on resuming it.
  if (media.active && !media.suspended && media.consultation !== want) media.leave();
  const blocked = app.socket !== 'open' || app.joinRetry.pending;
  if (want && want !== app.noRejoin && !media.active && !blocked) {
    app.callEnded = false;
    app.mediaEndReason = null;
    ui.rejoin.hidden = true;
    media.setLocalState({ ...devices.sending, screen: false });
    media.join(want);
  }
  ui.leave.disabled = !media.active;
}

function endCall(text) {
  app.callEnded = true;
  if (media.active) media.close();
  app.joinRetry.cancel();
  ui.rejoin.hidden = true;
  say(text);
}


function onMediaState({ state, consultation, reason, retryable, error }) {
  switch (state) {
    case 'joining':
    case 'connecting':
      say('Connecting the call…');
      break;
    case 'connected':
      app.joinRetry.succeeded();
      sayInCall();
      break;
    case 'reconnecting':
      say('The connection was interrupted. Reconnecting…');
      break;
    case 'ended':
      app.mediaEndReason = reason;
      if (retryable) {
        say(
          reason === 'node_moved'
            ? 'Moving the call to another server…'
            : 'The call connection was lost. Reconnecting…',
        );
        // A media server that stopped or is being taken out of service: the call
        // moves to another at once.
        if (MOVED_END_REASONS.has(reason)) app.joinRetry.soon();
        else app.joinRetry.later();
      } else {
        app.noRejoin = consultation;
        if (reason === 'consultation_ended') {
          endCall(
            app.session?.kind === 'staff'
              ? 'The consultation has ended. Waiting for your next patient…'
              : 'The consultation has ended. Thank you; you can close this page.',
          );
        } else if (reason === 'removed_from_consultation') {
          say('You are no longer in this consultation.');
        } else {
          say('You have left the call.');
        }
      }
      break;
    case 'failed':
      if (RETRY_JOIN_CODES.has(error?.code)) {
        say('The call could not be connected yet. Trying again…');
        app.joinRetry.later();
      } else {
        app.noRejoin = consultation;
        say(`The call could not be joined: ${error?.message ?? 'unknown error'}`);
      }
      break;
  }
  ui.leave.disabled = !media.active;
}

function sayInCall() {
  if (media.state !== 'connected') return;
  const n = ui.remote.querySelectorAll('figure').length;
  if (n === 0) {
    say(
      app.session?.kind === 'staff'
        ? 'In the call. Waiting for the patient’s video…'
        : 'Connected. Waiting for the clinician to join the call…',
    );
  } else {
    say(`In the call with ${n} other ${n === 1 ? 'person' : 'people'}.`);
  }
}

// --- videos ---------------------------------------------------------------------------------

function addRemoteVideo(stream) {
  tiles.add(stream, media.peerState(stream.id));
  sayInCall();
}

function removeRemoteVideo(stream) {
  tiles.remove(stream);
  sayInCall();
}

// --- start ----------------------------------------------------------------------------------

if (!app.token) {
  say('This page needs the personal link you were given. Please open that link again.');
} else {
  renderSelf();
  sig.connect();
}
