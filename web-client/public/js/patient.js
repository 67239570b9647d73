// The patient's page, behind a clinic's open link (/c/{clinic}) and a personal invite link
// (/i#{invite}: the invite sits in the fragment, which the browser never sends to a server,
// so it reaches no log): pre-call check -> name -> waiting room -> call -> the end. This module
// starts the page and runs the journey between the screens; the screens' own work is in
//   patient-check-screen.js  the check (devices asked for from a press; the network test)
//   patient-call.js          the call (media, tiles, self view, controls, quality)
//   patient-app.js           shared state, screens, announcements; patient-store.js the
//                            visit kept per tab and per link; patient-words.js the words.
//
// - The server is the truth: on every (re)connection it sends the visit's status and its
//   messages again, and the page renders what it is told (signalling.js reconnects).
// - On admission the call connects with no click (media.js does the WebRTC).
// - Camera and microphone are asked for only from a press (devices.js): the check's
//   "Turn on camera and microphone", or the same button shown while waiting or in the
//   call after a reload. Until then a call receives but sends nothing.
// - `window.consultPatient` exposes the page's state to the browser tests.

import { Signalling } from './signalling.js';
import { LocalDevices } from './devices.js';
import { $, announce, api, app, note, setClinic, show } from './patient-app.js';
import { playTestTone, resumeAudio } from './patient-check.js';
import { leaveCheck, onDeviceChosen, renderPreview, runCheck, showCheck, showDevices, stopMeter } from './patient-check-screen.js';
import {
  callState, dropCall, endCall, enterCall, leaveCallScreen, media, onDevicesChanged, quality, reconcile, renderSelf,
  setCallSoundOnly, switchCamera, toggleCamera, toggleMute, updateSwitch,
} from './patient-call.js';
import {
  forgetVisit, hashKey, keepInTab, localVisits, nameCheck, parseLink, PREVIOUS_KEY, readInvite, readJson, saveVisit, tabVisit,
  writeJson,
} from './patient-store.js';
import { ENDED, ERRORS, deviceFixes } from './patient-words.js';

app.devices = new LocalDevices({
  onChange: (change) => {
    onDevicesChanged(change);
    if (app.screen === 'check') {
      renderPreview();
      if (['lost', 'found', 'default'].includes(change.reason)) showDevices();
    }
    if (app.screen === 'waiting') renderLocalWarning();
  },
});

window.consultPatient = {
  state: () => ({
    screen: app.screen,
    error: app.errorCode,
    entry: app.entry?.kind ?? null,
    clinic: app.clinic?.id ?? null,
    clinicName: app.clinic?.name ?? null,
    socket: app.socket,
    visit: app.visit,
    patient: app.status?.state ?? null,
    waitingSince: app.waitingSince,
    messages: app.messages.map((m) => m.text),
    check: { ...app.check },
    local: app.devices.started
      ? {
        camera: app.devices.camera,
        microphone: app.devices.microphone,
        tracks: app.devices.stream.getTracks().length,
        muted: app.devices.muted,
        cameraOff: app.devices.cameraOff,
        hidden: app.devices.hidden,
        facing: app.devices.facing,
        cameraDevice: app.devices.cameraTrack?.getSettings().deviceId ?? null,
        micDevice: app.devices.micTrack?.getSettings().deviceId ?? null,
      }
      : null,
    media: media.state,
    quality: quality.level,
    qualityFigures: { ...quality.figures },
    ended: app.ended,
    announced: app.announcements.slice(),
    ...callState(),
  }),
  stats: () => media.stats(),
  messages: () => app.log.slice(),
};

// --- errors and the link --------------------------------------------------------------------

function showError(code) {
  const [title, next] = ERRORS[code] ?? ERRORS.unavailable;
  app.errorCode = code;
  $('error-h').textContent = title;
  $('error-next').textContent = next;
  $('error-retry').hidden = !['unreachable', 'unavailable'].includes(code);
  stopLocalMedia();
  show('error');
}

/** Gives the camera and microphone back (the lights go off). */
function stopLocalMedia() {
  stopMeter();
  app.devices.stop();
  $('preview').srcObject = null;
}

/** Loads the clinic behind the link; shows an error and resolves false if there is none. */
async function loadClinic() {
  let clinicId;
  let invite = null;
  if (app.entry.kind === 'invite') {
    invite = readInvite(app.entry.token);
    if (!invite) {
      showError('invite_invalid');
      return false;
    }
    clinicId = invite.clinic;
  } else {
    clinicId = app.entry.clinic;
  }
  const res = await api('GET', `/api/clinics/${encodeURIComponent(clinicId)}`);
  if (!res.ok) {
    showError(res.code === 'not_found' ? (invite ? 'invite_invalid' : 'not_found') : res.code === 'unreachable' ? 'unreachable' : 'unavailable');
    return false;
  }
  setClinic({ id: res.data.id, name: res.data.name });
  if (invite && invite.exp * 1000 < Date.now() + app.clockSkew) {
    showError('invite_expired');
    return false;
  }
  if (!invite && !res.data.open_link) {
    showError('clinic_closed');
    return false;
  }
  return true;
}

// --- details and entering ------------------------------------------------------------------------

function showDetails() {
  leaveCheck();
  show('details');
}

function fieldError(text) {
  const err = $('name-error');
  const input = $('name');
  err.textContent = text || '';
  err.hidden = !text;
  if (text) {
    input.setAttribute('aria-invalid', 'true');
    input.setAttribute('aria-describedby', 'name-error name-hint');
  } else {
    input.removeAttribute('aria-invalid');
    input.setAttribute('aria-describedby', 'name-hint');
  }
}

function formError(text) {
  const box = $('details-error');
  box.textContent = text || '';
  box.hidden = !text;
}

async function enter(e) {
  e.preventDefault();
  const name = $('name').value.trim();
  const details = $('details').value.trim();
  formError(null);
  if (!name) {
    fieldError('Enter your full name.');
    $('name').focus();
    return;
  }
  fieldError(null);
  const button = $('join');
  button.disabled = true;
  button.textContent = 'Joining…';
  // Back with the same personal invite after the visit ended: the old credential shows
  // the server it is the same patient (anyone else is refused).
  const previous = readJson('session', PREVIOUS_KEY);
  const entry = previous?.entry === app.entryKey ? { ...app.entry, previous: previous.token } : app.entry;
  const res = await api('POST', '/api/visits', {
    entry,
    name,
    ...(details ? { details } : {}),
  });
  button.disabled = false;
  button.textContent = 'Join the waiting room';
  if (!res.ok) {
    switch (res.code) {
      case 'clinic_closed':
      case 'invite_invalid':
      case 'invite_expired':
      case 'invite_used':
      case 'invite_revoked':
      case 'not_found':
        showError(res.code);
        return;
      case 'invalid_input':
        fieldError(res.message ? `Please check what you typed: ${res.message}.` : 'Please check what you typed.');
        $('name').focus();
        return;
      case 'rate_limited':
        formError('Too many people have tried to join from your network in the last minute. Wait a minute, then press Join the waiting room again.');
        break;
      case 'unreachable':
        formError('We could not reach the video service. Check that you are connected to the internet, then press Join the waiting room again.');
        break;
      default:
        formError('The video service could not take you in just now. Please press Join the waiting room again in a moment.');
    }
    $('details-error').focus();
    return;
  }
  saveVisit(res.data.visit_token, res.data.visit, res.data.expires_at, await nameCheck(name));
  app.token = res.data.visit_token;
  app.visit = res.data.visit;
  app.waitingSince = Date.now() + app.clockSkew;
  app.status = { state: 'waiting', clinic_name: app.clinic?.name ?? '', waiting_since: app.waitingSince };
  showWaiting();
  announce('You are in the waiting room. The clinic knows you are here.');
  connect();
}

// --- resuming a visit ---------------------------------------------------------------------------------

/**
 * Back to a visit (a reload, a reopened link). The camera and microphone are not asked
 * for on load: the waiting room and the call offer the button that turns them on.
 */
function resume(token) {
  app.token = token;
  $('loading-h').textContent = 'Taking you back to your place…';
  show('loading');
  connect();
  renderLocalWarning();
  reconcile();
}

/** Turns the camera and microphone on from the waiting room or the call (a press). */
async function turnOnDevices() {
  resumeAudio();
  await app.devices.start();
  renderLocalWarning();
  renderSelf();
  updateSwitch();
  const { camera, microphone } = app.devices;
  announce(camera === 'ok' && microphone === 'ok' ? 'Your camera and microphone are on.' : deviceFixes(camera, microphone, '').join(' '));
}

function renderLocalWarning() {
  const d = app.devices;
  const el = $('waiting-media-warning');
  const texts = d.started ? deviceFixes(d.camera, d.microphone, 'Then reload this page: you keep your place.') : [];
  el.textContent = texts.join(' ');
  el.hidden = !texts.length;
  $('waiting-devices').hidden = d.started;
}

/** The reopened clinic link: back to the earlier visit if the name matches. */
async function resumeWithName(e) {
  e.preventDefault();
  const earlier = localVisits()[app.entryKey];
  const input = $('resume-name');
  const err = $('resume-error');
  const fail = (text) => {
    err.textContent = text;
    err.hidden = false;
    input.setAttribute('aria-invalid', 'true');
    input.setAttribute('aria-describedby', 'resume-error resume-hint');
    input.focus();
  };
  if (!earlier) {
    showCheck();
    return;
  }
  if (!input.value.trim()) {
    fail('Enter your full name.');
    return;
  }
  if ((await nameCheck(input.value)) !== earlier.check) {
    fail('This is not the name given on this device. Check the spelling, or press “I am someone else: start again”.');
    return;
  }
  err.hidden = true;
  input.removeAttribute('aria-invalid');
  keepInTab({ entry: app.entryKey, token: earlier.token, expires_at: earlier.expires_at });
  resume(earlier.token);
}

// --- the websocket -----------------------------------------------------------------------------------

function connect() {
  app.sig?.close();
  const sig = new Signalling({
    token: app.token,
    onMessage,
    onState: (s) => {
      if (app.sig === sig) onSocketState(s);
    },
  });
  app.sig = sig;
  sig.connect();
}

function onSocketState({ state, fatal }) {
  const was = app.socket;
  app.socket = state;
  const banner = $('connection');
  if (state === 'reconnecting') {
    dropCall();
    if (['waiting', 'call', 'loading'].includes(app.screen)) {
      banner.textContent = 'The connection to the clinic was interrupted. Reconnecting… Keep this page open: you will not lose your place.';
      banner.hidden = false;
      if (was !== 'reconnecting') announce('The connection to the clinic was interrupted. Reconnecting. You will not lose your place.');
    }
  } else if (state === 'open') {
    banner.hidden = true;
    if (was === 'reconnecting') announce('Reconnected.');
  } else if (state === 'closed') {
    banner.hidden = true;
    media.close();
    if (fatal && app.screen !== 'ended') {
      // The credential no longer opens a visit: it ended, or the server forgot it.
      showEnded('lost');
    }
  }
  reconcile();
}

function onMessage(msg) {
  note('in', msg);
  if (media.handle(msg)) return;
  switch (msg.type) {
    case 'welcome':
      if (msg.session.kind !== 'patient') break;
      media.resume();
      app.visit = msg.session.visit;
      setClinic({ id: msg.session.clinic, name: msg.session.clinic_name });
      // The server sends the status and every message again after this.
      app.messages = [];
      renderMessages();
      break;
    case 'patient_status':
      onStatus(msg.status);
      break;
    case 'staff_message':
      onStaffMessage(msg);
      break;
    default:
      break; // errors of commands are answered to their promise; the rest is not ours
  }
}

function onStatus(status) {
  const prev = app.status;
  app.status = status;
  if (status.state !== 'admitted') app.noRejoin = null;
  switch (status.state) {
    case 'waiting': {
      app.waitingSince = status.waiting_since;
      if (status.clinic_name && status.clinic_name !== app.clinic?.name) {
        const moved = prev?.state === 'waiting' && app.clinic?.name;
        setClinic({ id: app.clinic?.id, name: status.clinic_name });
        if (moved) announce(`You have been moved to the waiting room of ${status.clinic_name}. You keep your place.`);
      }
      const back = prev?.state === 'admitted';
      showWaiting();
      if (back) {
        $('waiting-status').textContent = 'The clinician has put you back in the waiting room. You keep your place; please keep this page open.';
        announce('The clinician has put you back in the waiting room. You keep your place.');
      }
      break;
    }
    case 'admitted':
      if (app.screen !== 'call') {
        enterCall();
        $('device-note').hidden = true;
        show('call');
        announce('The clinician is joining. Your call is starting.');
      }
      setCallSoundOnly(status.audio_only === true);
      break;
    case 'ended':
      showEnded(status.reason);
      break;
  }
  reconcile();
}

function onStaffMessage(msg) {
  if (app.messages.some((m) => m.sent_at === msg.sent_at && m.text === msg.text)) return;
  app.messages.push({ text: msg.text, sent_at: msg.sent_at });
  app.messages.sort((a, b) => a.sent_at - b.sent_at);
  renderMessages();
  const key = `${msg.sent_at}|${msg.text}`;
  if (!app.seenMessages.has(key)) {
    app.seenMessages.add(key);
    // Announced once, even though a reconnection sends every message again.
    announce(`Message from the clinic: ${msg.text}`);
  }
}

function renderMessages() {
  const list = $('messages');
  list.replaceChildren(
    ...app.messages.map((m) => {
      const li = document.createElement('li');
      const time = document.createElement('time');
      const at = new Date(m.sent_at - app.clockSkew);
      time.dateTime = at.toISOString();
      time.textContent = at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      const text = document.createElement('p');
      text.textContent = m.text;
      li.append(time, text);
      return li;
    }),
  );
  $('no-messages').hidden = app.messages.length > 0;
}

// --- waiting ---------------------------------------------------------------------------------------------

let waitedTimer = null;

function showWaiting() {
  if (app.screen !== 'waiting') {
    $('waiting-status').textContent = 'The clinic knows you are here. Please keep this page open: your call will start by itself when the clinician is ready.';
  }
  leaveCallScreen();
  renderLocalWarning();
  renderWaited();
  clearInterval(waitedTimer);
  waitedTimer = setInterval(renderWaited, 5000);
  show('waiting');
}

function renderWaited() {
  if (app.waitingSince == null) return;
  const minutes = Math.floor(Math.max(0, Date.now() + app.clockSkew - app.waitingSince) / 60_000);
  const h = Math.floor(minutes / 60);
  const m = minutes % 60;
  const mins = `${m} ${m === 1 ? 'minute' : 'minutes'}`;
  const text = minutes < 1 ? 'less than a minute' : h ? `${h} ${h === 1 ? 'hour' : 'hours'}${m ? ` ${mins}` : ''}` : mins;
  if ($('waited').textContent !== text) $('waited').textContent = text;
}

async function leaveVisit(errorEl) {
  errorEl.hidden = true;
  try {
    if (app.sig?.state === 'open') {
      await app.sig.command({ type: 'leave' });
    } else {
      const res = await fetch('/api/commands', {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${app.token}` },
        body: JSON.stringify({ type: 'leave' }),
      });
      if (!res.ok && res.status !== 410) throw new Error(String(res.status));
    }
    showEnded('left');
  } catch (e) {
    if (e.code === 'visit_ended') {
      showEnded('left');
      return;
    }
    errorEl.textContent = 'We could not tell the clinic you are leaving. Check your connection and try again, or simply close this page.';
    errorEl.hidden = false;
  }
}

// --- the end --------------------------------------------------------------------------------------------

function showEnded(reason) {
  if (app.screen === 'ended') return;
  app.ended = reason;
  clearInterval(waitedTimer);
  endCall();
  stopLocalMedia(); // the camera light goes off
  forgetVisit();
  const sig = app.sig;
  app.sig = null;
  app.socket = 'closed';
  // Let the server's last words (media_ended) arrive; then close for good.
  setTimeout(() => sig?.close(), 1000);
  $('connection').hidden = true;
  const [title, text] = ENDED[reason] ?? ENDED.lost;
  $('ended-h').textContent = title;
  $('ended-text').textContent = text;
  show('ended');
}

function rejoin() {
  if (app.entry?.kind === 'invite' && app.token) writeJson('session', PREVIOUS_KEY, { entry: app.entryKey, token: app.token });
  forgetVisit();
  location.reload();
}

// --- wiring -----------------------------------------------------------------------------------------------

function wire() {
  $('check-continue').addEventListener('click', showDetails);
  $('check-start').addEventListener('click', runCheck);
  $('check-retry').addEventListener('click', runCheck);
  $('tone').addEventListener('click', async (e) => {
    const b = e.currentTarget;
    b.disabled = true;
    $('tone-result').textContent = 'Playing a test sound…';
    const ok = await playTestTone();
    b.disabled = false;
    $('tone-result').textContent = ok
      ? 'Did you hear two short tones? If not, turn up the volume or check your headphones or speaker, then play it again.'
      : 'This browser cannot play the test sound. You will still hear the clinician in the call.';
    b.focus();
  });
  $('camera-select').addEventListener('change', (e) => onDeviceChosen('video', e.target.value));
  $('mic-select').addEventListener('change', (e) => onDeviceChosen('audio', e.target.value));
  $('details-form').addEventListener('submit', enter);
  $('back-to-check').addEventListener('click', showCheck);
  $('name').addEventListener('input', () => {
    if (!$('name-error').hidden && $('name').value.trim()) fieldError(null);
  });

  $('waiting-leave').addEventListener('click', () => {
    $('waiting-leave-confirm').hidden = false;
    $('waiting-leave-yes').focus();
  });
  $('waiting-leave-no').addEventListener('click', () => {
    $('waiting-leave-confirm').hidden = true;
    $('waiting-leave').focus();
  });
  $('waiting-leave-yes').addEventListener('click', () => leaveVisit($('waiting-leave-error')));

  $('mute').addEventListener('click', toggleMute);
  $('camera').addEventListener('click', toggleCamera);
  $('switch-camera').addEventListener('click', switchCamera);
  $('waiting-devices-on').addEventListener('click', turnOnDevices);
  $('call-devices-on').addEventListener('click', turnOnDevices);
  $('call-leave').addEventListener('click', () => {
    $('call-leave-confirm').hidden = false;
    $('call-leave-yes').focus();
  });
  $('call-leave-no').addEventListener('click', () => {
    $('call-leave-confirm').hidden = true;
    $('call-leave').focus();
  });
  $('call-leave-yes').addEventListener('click', () => leaveVisit($('call-leave-error')));

  $('rejoin').addEventListener('click', rejoin);
  $('error-retry').addEventListener('click', () => location.reload());
  $('resume-form').addEventListener('submit', resumeWithName);
  $('resume-no').addEventListener('click', () => {
    forgetVisit();
    showCheck();
  });

  // Browsers start sound only after a gesture: the first press anywhere allows the meter.
  const unlock = () => {
    resumeAudio();
    document.removeEventListener('pointerdown', unlock);
    document.removeEventListener('keydown', unlock);
  };
  document.addEventListener('pointerdown', unlock);
  document.addEventListener('keydown', unlock);
  // Escape closes an open "are you sure?" box.
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    if (!$('call-leave-confirm').hidden) $('call-leave-no').click();
    if (!$('waiting-leave-confirm').hidden) $('waiting-leave-no').click();
  });
}

async function start() {
  wire();
  if (!window.isSecureContext) {
    showError('insecure');
    return;
  }
  if (!window.RTCPeerConnection || !navigator.mediaDevices?.getUserMedia || !window.WebSocket) {
    showError('unsupported');
    return;
  }
  app.entry = parseLink();
  if (!app.entry) {
    showError('no_link');
    return;
  }
  app.entryKey = app.entry.kind === 'open_link' ? `c:${app.entry.clinic}` : `i:${hashKey(app.entry.token)}`;

  // A reload of this tab: straight back to the same place.
  const here = tabVisit();
  if (here?.entry === app.entryKey && here.token && here.expires_at > Date.now()) {
    resume(here.token);
    return;
  }
  // A reopened link: a personal invite resumes; a clinic's shared link asks first (the
  // device may be shared, and the next person must not walk into someone else's visit).
  const earlier = localVisits()[app.entryKey];
  if (earlier) {
    if (app.entry.kind === 'invite') {
      resume(earlier.token);
      return;
    }
    if (!(await loadClinic())) return;
    const since = new Date(earlier.since).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    $('resume-text').textContent = `Someone on this device joined the waiting room of ${app.clinic.name} at ${since}. If that was you, enter your name to go back to your place in the queue.`;
    show('resume');
    return;
  }
  if (!(await loadClinic())) return;
  showCheck();
}

start();
