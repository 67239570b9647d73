// The patient's page, behind a clinic's open link (/c/{clinic}) and a personal invite link
// (/i#{invite}: the invite sits in the fragment, which the browser never sends to a server,
// so it reaches no log): pre-call check -> name -> waiting room -> call -> the end.
//
// - The visit credential (visit_token) lives in sessionStorage (this tab: a reload goes
//   straight back to the same place) and in localStorage under the link it came from: a
//   reopened personal invite resumes by itself; a reopened clinic link (the device may
//   be shared) asks for the name given, checked against a hash kept with it. The token
//   is never put in a URL and never logged.
// - The server is the truth: on every (re)connection it sends the visit's status and its
//   messages again, and the page renders what it is told (signalling.js reconnects).
// - On admission the call connects with no click (media.js does the WebRTC).
// - `window.consultPatient` exposes the page's state to the browser tests.

import { Signalling } from './signalling.js';
import { Backoff, MediaSession } from './media.js';
import {
  openLocalMedia, switchDevice, listDevices, watchLevel, playTestTone, resumeAudio, checkConnection,
} from './patient-check.js';
import { addRemoteVideo, removeRemoteVideo, QualityMonitor, QUALITY_TEXT } from './patient-call.js';

const $ = (id) => document.getElementById(id);

// --- words -------------------------------------------------------------------------------

/** Problems that stop the journey, each with what to do next. */
const ERRORS = {
  no_link: ['This page needs your link', 'Open the link the clinic sent you, in a text message, email or letter. If you cannot find it, contact the clinic.'],
  not_found: ['We cannot find this clinic', 'The link may be incomplete or no longer in use. Open it again from the message the clinic sent you, or contact the clinic for a new link.'],
  clinic_closed: ['This clinic is not taking patients through this link', 'The clinic is not open to join by this link at the moment. If you have an appointment, use the personal link the clinic sent you, or contact the clinic.'],
  invite_invalid: ['This link does not work', 'It may not have been copied in full. Open it again from the message the clinic sent you. If it still does not work, contact the clinic for a new link.'],
  invite_expired: ['This link has expired', 'Links only work for a limited time. Please contact the clinic and ask for a new link.'],
  invite_used: ['Someone has already joined with this link', 'Each personal link lets one person in. If that was you, go back to the browser or device where you joined. Otherwise, please contact the clinic for a link of your own.'],
  invite_revoked: ['This link has been withdrawn', 'The clinic has cancelled this link. Please contact the clinic if you still need to join.'],
  unreachable: ['We cannot reach the video service', 'Check that you are connected to the internet (Wi-Fi or mobile data), then press Try again. If it keeps happening, contact the clinic.'],
  unavailable: ['The video service is not available right now', 'Please press Try again in a few minutes. If it keeps happening, contact the clinic.'],
  insecure: ['This page was not opened securely', 'Open the link exactly as the clinic sent it: it starts with https://. If it does, please contact the clinic.'],
  unsupported: ['This browser cannot make video calls', 'Please open your link in an up-to-date Chrome, Edge, Firefox or Safari. On an iPhone or iPad, use Safari.'],
};

/** Each device's state in a few words, under its preview or meter. */
const CAMERA_SHORT = {
  ok: 'Your camera works.',
  blocked: 'Blocked by your browser.',
  missing: 'No camera found.',
  busy: 'In use by another app.',
  error: 'Your camera could not be started.',
  unsupported: 'Not available in this browser.',
};
const MIC_SHORT = {
  ok: 'Your microphone is on. Say something: the bar should move.',
  heard: 'We can hear you.',
  quiet: 'We cannot hear anything yet. Check your microphone is not muted or switched off, then speak.',
  suspended: 'Your microphone is on. To see its level, press Play a test sound.',
  blocked: 'Blocked by your browser.',
  missing: 'No microphone found.',
  busy: 'In use by another app.',
  error: 'Your microphone could not be started.',
  unsupported: 'Not available in this browser.',
};
/** What is wrong and how to fix it; the last step (check again, reload) is added where shown. */
const CAMERA_FIX = {
  blocked: 'Your browser is blocking the camera. To allow it, select the camera or padlock symbol next to the web address and choose Allow.',
  missing: 'We could not find a camera. If you have one, check it is plugged in and switched on. You can still join with sound only.',
  busy: 'Your camera is being used by another app, such as another video call. Close that app.',
  error: 'Your camera could not be started. If trying again does not help, restart your browser.',
  unsupported: 'This browser cannot use your camera here. Please use an up-to-date Chrome, Edge, Firefox or Safari.',
};
const MIC_FIX = {
  blocked: 'Your browser is blocking the microphone. To allow it, select the microphone or padlock symbol next to the web address and choose Allow.',
  missing: 'We could not find a microphone. Plug in a headset, or use a phone, tablet or laptop with a microphone: without one the clinician cannot hear you.',
  busy: 'Your microphone is being used by another app, such as another call. Close that app.',
  error: 'Your microphone could not be started. If trying again does not help, restart your browser.',
  unsupported: 'This browser cannot use your microphone here. Please use an up-to-date Chrome, Edge, Firefox or Safari.',
};
const BOTH_BLOCKED = 'Your browser is blocking the camera and microphone. To allow them, select the camera or padlock symbol next to the web address and choose Allow.';
const NET_SHORT = {
  pending: 'Waiting to test your connection…',
  running: 'Testing your connection to the video service…',
  ok: 'Your connection works: video and sound can reach the clinic.',
  partial: 'You are connected, but we could not confirm that video reaches the clinic. The call may still work.',
  failed: 'Blocked: video cannot get through your network.',
  unreachable: 'Could not reach the video service.',
  unavailable: 'The video service is not available at the moment.',
  rate_limited: 'Too many checks from your network.',
};
const NET_FIX = {
  failed: 'Your network seems to block video calls. Try another network: switch between Wi-Fi and mobile data, or turn off a VPN. On a work network, ask your IT team to allow video calls.',
  unreachable: 'We could not reach the video service to test your connection. Check that you are connected to the internet.',
  unavailable: 'The video service is not available at the moment. Wait a few minutes.',
  rate_limited: 'Too many checks have come from your network. Wait a minute.',
};

/** The problems with camera and microphone, each with how to fix it, ending with `last`. */
function deviceFixes(camera, microphone, last) {
  const out = [];
  if (camera === 'blocked' && microphone === 'blocked') out.push(BOTH_BLOCKED);
  else {
    if (CAMERA_FIX[camera]) out.push(CAMERA_FIX[camera]);
    if (MIC_FIX[microphone]) out.push(MIC_FIX[microphone]);
  }
  return out.map((t) => (t.startsWith('This browser') ? t : `${t} ${last}`));
}
const VIA_TEXT = {
  udp: 'Connected directly (UDP): the best kind of connection.',
  tcp: 'Connected over TCP: this works, but the picture may be less smooth.',
  relay: 'Connected through a relay server (TURN): this works, but may be a little slower.',
};
const ENDED = {
  consultation_ended: ['Your appointment has ended', 'Thank you. The clinician has ended the call. You can close this page.'],
  left: ['You have left', 'You left the appointment. The clinic can see that you have gone.'],
  removed: ['The clinic has closed your visit', 'You are no longer in the waiting room. If you think this is a mistake, contact the clinic, or join again.'],
  transferred: ['Your visit has moved', 'The clinic has moved your visit. Join again using the link the clinic gives you.'],
  lost: ['Your place in the waiting room has ended', 'We could not find your visit any more. This can happen if the service was restarted or your visit ran out of time. Please join the waiting room again.'],
};

// --- state ---------------------------------------------------------------------------------

const SESSION_KEY = 'consult.patient.visit'; // sessionStorage: {entry, token, visit, expires_at}
const LOCAL_KEY = 'consult.patient.visits'; // localStorage: {entryKey: {token, expires_at, since}}
const PREVIOUS_KEY = 'consult.patient.previous'; // sessionStorage: {entry, token} of an ended invite visit
const RETRY_JOIN_CODES = new Set(['unavailable', 'conflict', 'internal', 'rate_limited']);

const app = {
  entry: null, // {kind: 'open_link', clinic} | {kind: 'invite', token}
  entryKey: null,
  clinic: null, // {id, name}
  screen: 'loading',
  errorCode: null,
  local: undefined, // {stream, camera, microphone}; undefined until asked
  check: { camera: 'pending', microphone: 'pending', heard: false, network: 'pending', via: null, rttMs: null },
  token: null,
  visit: null,
  sig: null,
  socket: 'closed',
  status: null, // the last patient_status's status
  waitingSince: null,
  messages: [], // [{text, sent_at}] as the server last sent them
  seenMessages: new Set(), // announced already (a reconnect sends them all again)
  ended: null,
  noRejoin: null,
  joinRetry: new Backoff(() => reconcile()), // joins the call again after a failure
  joinedOnce: false,
  announcements: [], // what was said to screen readers, for tests
  log: [], // message types and a few plain fields: never SDP, tokens or texts
  clockSkew: 0, // server time minus ours (ms), from a Date header
};

const media = new MediaSession({
  send: (msg) => {
    note('out', msg);
    return app.sig?.send(msg);
  },
  localStream: null,
  onRemoteStream,
  onRemoteStreamRemoved,
  onState: onMediaState,
});

const quality = new QualityMonitor(media, onQuality);

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
    local: app.local ? { camera: app.local.camera, microphone: app.local.microphone, tracks: app.local.stream.getTracks().length } : null,
    media: media.state,
    remoteVideos: $('remote').querySelectorAll('video').length,
    quality: quality.level,
    qualityFigures: { ...quality.figures },
    ended: app.ended,
    announced: app.announcements.slice(),
    callStatus: $('call-status').hidden ? '' : $('call-status').textContent,
  }),
  stats: () => media.stats(),
  messages: () => app.log.slice(),
};

// --- small helpers ---------------------------------------------------------------------------

/** Keeps the type and a few plain fields of each websocket message, for diagnostics. */
function note(dir, msg) {
  const entry = { dir, type: msg.type, at: Date.now() };
  for (const k of ['reason', 'connected', 'code', 'leg']) {
    if (typeof msg[k] === 'string' || typeof msg[k] === 'boolean') entry[k] = msg[k];
  }
  if (msg.status?.state) entry.state = msg.status.state;
  if (msg.command?.type) entry.command = msg.command.type;
  app.log.push(entry);
  if (app.log.length > 300) app.log.shift();
}

let announceTimer = null;
let announcePending = '';
/** Says `text` to screen readers (the polite live region). */
function announce(text) {
  const el = $('announce');
  clearTimeout(announceTimer);
  // Emptied first, so that the same sentence twice is announced twice; what comes within
  // the same moment is said together rather than lost.
  el.textContent = '';
  announcePending = announcePending ? `${announcePending} ${text}` : text;
  announceTimer = setTimeout(() => {
    el.textContent = announcePending;
    announcePending = '';
  }, 100);
  app.announcements.push(text);
  if (app.announcements.length > 50) app.announcements.shift();
}

// A phone's screen should not go dark (and the page to sleep) while the patient waits or
// talks; the lock is let go by the browser when the page is hidden, so it is taken again.
let wakeLock = null;
async function keepAwake() {
  const want = app.screen === 'waiting' || app.screen === 'call';
  if (!want) {
    wakeLock?.release().catch(() => {});
    wakeLock = null;
    return;
  }
  if (wakeLock || document.visibilityState !== 'visible' || !navigator.wakeLock) return;
  try {
    wakeLock = await navigator.wakeLock.request('screen');
    wakeLock.addEventListener('release', () => {
      wakeLock = null;
    });
  } catch {
    // refused (battery saver, an old browser): the page still works
  }
}
document.addEventListener('visibilitychange', keepAwake);

function show(screen, { focus = true } = {}) {
  const changed = app.screen !== screen;
  app.screen = screen;
  keepAwake();
  for (const s of document.querySelectorAll('section[data-screen]')) s.hidden = s.dataset.screen !== screen;
  document.body.dataset.page = screen;
  if (changed) {
    const titles = { check: 'Check your camera and sound', details: 'Your details', waiting: 'Waiting room', call: 'Video call', ended: 'Appointment ended', error: 'Problem', resume: 'Waiting room' };
    document.title = `${titles[screen] ?? 'Video appointment'} – ${app.clinic?.name ?? 'Video appointment'}`;
    if (focus) {
      const h = document.querySelector(`[data-screen="${screen}"] h1`);
      h?.focus({ preventScroll: false });
    }
    if (screen !== 'waiting') $('waiting-leave-confirm').hidden = true;
    if (screen !== 'call') $('call-leave-confirm').hidden = true;
  }
}

function showError(code) {
  const [title, next] = ERRORS[code] ?? ERRORS.unavailable;
  app.errorCode = code;
  $('error-h').textContent = title;
  $('error-next').textContent = next;
  $('error-retry').hidden = !['unreachable', 'unavailable'].includes(code);
  stopLocalMedia();
  show('error');
}

function setClinic(clinic) {
  app.clinic = clinic;
  $('clinic-name').textContent = clinic?.name ?? '';
}

/** The server's clock minus ours, from a response's Date header (1 s resolution). */
function learnClock(res) {
  const date = Date.parse(res.headers.get('date') || '');
  if (!Number.isNaN(date)) {
    const skew = date - Date.now();
    app.clockSkew = Math.abs(skew) > 5000 ? skew : 0;
  }
}

async function api(method, path, body) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: body ? { 'content-type': 'application/json' } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch {
    return { ok: false, code: 'unreachable' };
  }
  learnClock(res);
  let data = null;
  try {
    data = await res.json();
  } catch {
    // an empty or non-JSON body (a proxy's error page)
  }
  if (res.ok) return { ok: true, data };
  return { ok: false, code: data?.code ?? (res.status >= 500 ? 'unavailable' : 'unreachable'), message: data?.message };
}

// --- storage (never in the URL, never logged) -----------------------------------------------

/** A short stable key for an invite, so that the invite itself is not a storage key. */
function hashKey(s) {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return (h >>> 0).toString(36);
}

function store(kind) {
  try {
    return kind === 'session' ? window.sessionStorage : window.localStorage;
  } catch {
    return null; // storage refused (some private modes): a reload needs the link again
  }
}

function readJson(kind, key) {
  try {
    return JSON.parse(store(kind)?.getItem(key) ?? 'null');
  } catch {
    return null;
  }
}

function writeJson(kind, key, value) {
  try {
    if (value == null) store(kind)?.removeItem(key);
    else store(kind)?.setItem(key, JSON.stringify(value));
  } catch {
    // full or refused: the visit still works until the page is closed
  }
}

function localVisits() {
  const all = readJson('local', LOCAL_KEY) || {};
  const now = Date.now();
  for (const [k, v] of Object.entries(all)) if (!v || v.expires_at <= now) delete all[k];
  return all;
}

/**
 * A check value of the name a patient gave (never the name itself): reopening a clinic's
 * shared link on the same device returns to the visit only for the same name.
 */
async function nameCheck(name) {
  const text = `${app.entryKey}|${name.trim().replace(/\s+/g, ' ').toLowerCase()}`;
  try {
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
    return [...new Uint8Array(digest).slice(0, 12)].map((b) => b.toString(16).padStart(2, '0')).join('');
  } catch {
    return `f${hashKey(text)}`; // no WebCrypto (not a secure context)
  }
}

function saveVisit(token, visit, expiresAt, check) {
  writeJson('session', SESSION_KEY, { entry: app.entryKey, token, visit, expires_at: expiresAt });
  const all = localVisits();
  all[app.entryKey] = { token, expires_at: expiresAt, since: Date.now(), check };
  writeJson('local', LOCAL_KEY, all);
}

function forgetVisit() {
  writeJson('session', SESSION_KEY, null);
  const all = localVisits();
  delete all[app.entryKey];
  writeJson('local', LOCAL_KEY, Object.keys(all).length ? all : null);
}

// --- the link ----------------------------------------------------------------------------------

/** What the address says: a clinic's open link or a personal invite. */
function parseLink() {
  if (/^\/i\/?$/.test(location.pathname)) {
    const token = location.hash.slice(1);
    return token ? { kind: 'invite', token } : null;
  }
  const m = location.pathname.match(/^\/c\/([^/]+)\/?$/);
  if (!m) return null;
  try {
    return { kind: 'open_link', clinic: decodeURIComponent(m[1]) };
  } catch {
    return null;
  }
}

/** The clinic and expiry an invite names (read, not verified: the server decides on entry). */
function readInvite(token) {
  try {
    const part = token.split('.')[1];
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '='));
    const claims = JSON.parse(json);
    if (typeof claims.clinic !== 'string' || typeof claims.exp !== 'number') return null;
    return claims;
  } catch {
    return null;
  }
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

// --- the pre-call check -------------------------------------------------------------------------

const check = {
  opening: null, // the camera and microphone being opened
  stopLevel: () => {},
  abort: null,
  quietTimer: null,
  runs: 0,
};

function stopLocalMedia() {
  check.stopLevel();
  check.stopLevel = () => {};
  for (const t of app.local?.stream.getTracks() ?? []) t.stop();
  $('preview').srcObject = null;
  $('self-view').srcObject = null;
}

function setResult(id, state, text) {
  const el = $(id);
  el.dataset.state = state;
  el.textContent = text;
}

async function startCheck() {
  show('check');
  const run = ++check.runs;
  check.abort?.abort();
  check.stopLevel();
  clearTimeout(check.quietTimer);
  app.check = { camera: 'pending', microphone: 'pending', heard: false, network: 'pending', via: null, rttMs: null };
  setResult('camera-result', 'pending', 'Starting your camera…');
  setResult('mic-result', 'pending', 'Starting your microphone…');
  setResult('net-result', 'pending', NET_SHORT.pending);
  $('net-detail').hidden = true;
  $('check-problems').hidden = true;
  $('check-continue-note').hidden = true;
  $('mic-level').value = 0;

  if (!app.local || app.local.camera !== 'ok' || app.local.microphone !== 'ok') {
    // One request at a time: a second "Check again" waits for the first.
    if (!check.opening) {
      check.opening = (async () => {
        for (const t of app.local?.stream.getTracks() ?? []) t.stop();
        app.local = await openLocalMedia();
        check.opening = null;
        reconcile();
      })();
    }
    await check.opening;
    if (run !== check.runs) return;
  }
  showDevices();
  await fillDeviceChoices();
  if (run !== check.runs) return;
  runNetworkCheck();
}

function showDevices() {
  const { stream, camera, microphone } = app.local;
  app.check.camera = camera;
  app.check.microphone = microphone;
  $('preview').srcObject = stream.getVideoTracks().length ? stream : null;
  $('preview-off').hidden = camera === 'ok';
  setResult('camera-result', camera === 'ok' ? 'ok' : 'bad', CAMERA_SHORT[camera]);
  check.stopLevel();
  clearTimeout(check.quietTimer);
  if (microphone === 'ok') {
    setResult('mic-result', 'pending', MIC_SHORT.ok);
    let loud = 0;
    check.stopLevel = watchLevel(stream, (level, ctxState) => {
      $('mic-level').value = level;
      if (ctxState === 'suspended' && !app.check.heard) {
        setResult('mic-result', 'pending', MIC_SHORT.suspended);
        return;
      }
      loud = level > 0.25 ? loud + 1 : 0;
      if (loud >= 1 && !app.check.heard) {
        app.check.heard = true;
        clearTimeout(check.quietTimer);
        setResult('mic-result', 'ok', MIC_SHORT.heard);
      }
    });
    check.quietTimer = setTimeout(() => {
      if (!app.check.heard && app.screen === 'check') setResult('mic-result', 'warn', MIC_SHORT.quiet);
    }, 8000);
  } else {
    setResult('mic-result', 'bad', MIC_SHORT[microphone]);
  }
  renderProblems();
}

async function fillDeviceChoices() {
  const { cameras, microphones } = await listDevices();
  for (const [kind, list, select, box] of [
    ['video', cameras, $('camera-select'), $('camera-choice')],
    ['audio', microphones, $('mic-select'), $('mic-choice')],
  ]) {
    box.hidden = list.length < 2;
    if (list.length < 2) continue;
    const current = (kind === 'video' ? app.local.stream.getVideoTracks() : app.local.stream.getAudioTracks())[0]?.getSettings().deviceId;
    select.replaceChildren(
      ...list.map((d, i) => {
        const o = document.createElement('option');
        o.value = d.deviceId;
        o.textContent = d.label || `${kind === 'video' ? 'Camera' : 'Microphone'} ${i + 1}`;
        o.selected = d.deviceId === current;
        return o;
      }),
    );
  }
}

async function onDeviceChosen(kind, deviceId) {
  const state = await switchDevice(app.local.stream, kind, deviceId);
  app.local[kind === 'video' ? 'camera' : 'microphone'] = state;
  showDevices();
}

async function runNetworkCheck() {
  check.abort?.abort();
  const ctrl = new AbortController();
  check.abort = ctrl;
  app.check.network = 'running';
  setResult('net-result', 'pending', NET_SHORT.running);
  $('net-detail').hidden = true;
  let result;
  try {
    result = await checkConnection(app.local?.stream ?? new MediaStream(), { signal: ctrl.signal });
  } catch {
    return; // aborted: a newer check (or leaving the screen) replaced this one
  }
  if (check.abort !== ctrl) return;
  check.abort = null;
  Object.assign(app.check, result);
  const good = result.network === 'ok';
  setResult('net-result', good ? 'ok' : result.network === 'partial' ? 'warn' : 'bad', NET_SHORT[result.network]);
  if (result.via && VIA_TEXT[result.via]) {
    $('net-detail').textContent = VIA_TEXT[result.via];
    $('net-detail').hidden = false;
  }
  renderProblems();
  if (app.screen === 'check') {
    const c = app.check;
    const works = (state) => (state === 'ok' ? 'works' : 'has a problem');
    announce(`Check finished. Camera ${works(c.camera)}, microphone ${works(c.microphone)}, connection ${works(c.network)}.`);
  }
}

/** The problems found, in one alert, with what they mean for the call. */
function renderProblems() {
  const c = app.check;
  const problems = deviceFixes(c.camera, c.microphone, 'Then press Check again.');
  if (NET_FIX[c.network]) problems.push(`${NET_FIX[c.network]} Then press Check again.`);
  const box = $('check-problems');
  // Unchanged problems are not written again (an alert is announced each time it is).
  const key = problems.join('\n');
  if (box.dataset.key === key && box.hidden === !problems.length) return;
  box.dataset.key = key;
  if (!problems.length) {
    box.hidden = true;
    box.replaceChildren();
    $('check-continue-note').hidden = true;
    return;
  }
  const heading = document.createElement('p');
  heading.className = 'error';
  heading.textContent = problems.length === 1 ? 'There is a problem:' : `There are ${problems.length} problems:`;
  const list = document.createElement('ul');
  for (const p of problems) {
    const li = document.createElement('li');
    li.textContent = p;
    list.append(li);
  }
  box.replaceChildren(heading, list);
  box.hidden = false;
  const note = $('check-continue-note');
  note.textContent = 'You can still continue to the waiting room, but the clinician may not be able to see or hear you.';
  note.hidden = false;
}

function leaveCheck() {
  check.runs++;
  check.abort?.abort();
  check.abort = null;
  check.stopLevel();
  check.stopLevel = () => {};
  clearTimeout(check.quietTimer);
  $('preview').srcObject = null;
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

async function resume(token) {
  app.token = token;
  $('loading-h').textContent = 'Taking you back to your place…';
  show('loading');
  connect();
  app.local = await openLocalMedia();
  renderLocalWarning();
  if (app.screen === 'call') {
    $('self-view').srcObject = app.local.stream;
    renderToggles();
  }
  reconcile();
}

function renderLocalWarning() {
  const l = app.local;
  const el = $('waiting-media-warning');
  const texts = l ? deviceFixes(l.camera, l.microphone, 'Then reload this page: you keep your place.') : [];
  el.textContent = texts.join(' ');
  el.hidden = !texts.length;
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
    startCheck();
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
  writeJson('session', SESSION_KEY, { entry: app.entryKey, token: earlier.token, expires_at: earlier.expires_at });
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
    media.close();
    quality.stop();
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
        app.joinedOnce = false;
        removeRemoteVideo($('remote'));
        setCallStatus('The clinician is joining…');
        $('self-view').srcObject = app.local?.stream ?? null;
        renderToggles();
        show('call');
        announce('The clinician is joining. Your call is starting.');
      }
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
  removeRemoteVideo($('remote'));
  quality.stop();
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

// --- the call --------------------------------------------------------------------------------------------

function setCallStatus(text) {
  const el = $('call-status');
  el.textContent = text || '';
  el.hidden = !text;
}

function wantedConsultation() {
  return app.status?.state === 'admitted' ? app.status.consultation : null;
}

/** Joins or leaves media so that it matches what the server says (admission connects). */
function reconcile() {
  const want = wantedConsultation();
  if (media.active && media.consultation !== want) media.leave();
  if (!want) quality.stop();
  const blocked = app.local === undefined || app.socket !== 'open' || app.joinRetry.pending;
  if (want && want !== app.noRejoin && !media.active && !blocked) {
    media.localStream = app.local.stream;
    media.join(want);
  }
}

function onMediaState({ state, consultation, reason, retryable, error }) {
  switch (state) {
    case 'joining':
    case 'connecting':
      if (!remoteCount()) setCallStatus(app.joinedOnce ? 'Reconnecting the call…' : 'The clinician is joining…');
      break;
    case 'connected':
      app.joinRetry.succeeded();
      quality.start();
      if (!remoteCount()) setCallStatus('The clinician is joining…');
      break;
    case 'ended':
      quality.stop();
      if (retryable) {
        setCallStatus('The call connection was lost. Reconnecting…');
        announce('The call connection was lost. Reconnecting.');
        app.joinRetry.later();
      } else if (reason === 'removed_from_consultation' || reason === 'consultation_ended') {
        // patient_status says what comes next (back to waiting, or the end).
      } else {
        app.noRejoin = consultation;
      }
      break;
    case 'failed':
      if (RETRY_JOIN_CODES.has(error?.code)) {
        setCallStatus('The call could not be connected yet. Trying again…');
        app.joinRetry.later();
      } else {
        app.noRejoin = consultation;
        setCallStatus('The call could not be connected. Please contact the clinic.');
        announce('The call could not be connected. Please contact the clinic.');
      }
      break;
  }
}

function remoteCount() {
  return $('remote').querySelectorAll('figure').length;
}

function onRemoteStream(stream) {
  addRemoteVideo($('remote'), stream, () => announce('Press Turn on sound to hear the clinic.'));
  setCallStatus('');
  if (!app.joinedOnce) {
    app.joinedOnce = true;
    announce('The clinician has joined. You are in the call.');
  } else if (remoteCount() > 1) {
    announce('Another person has joined the call.');
  }
}

function onRemoteStreamRemoved(stream) {
  removeRemoteVideo($('remote'), stream);
  if (!remoteCount() && app.screen === 'call' && media.active) {
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

function renderToggles() {
  const stream = app.local?.stream;
  const mic = stream?.getAudioTracks()[0];
  const cam = stream?.getVideoTracks()[0];
  const mute = $('mute');
  const camera = $('camera');
  mute.disabled = !mic;
  camera.disabled = !cam;
  mute.setAttribute('aria-pressed', String(!!mic && !mic.enabled));
  camera.setAttribute('aria-pressed', String(!!cam && !cam.enabled));
}

function toggle(kind) {
  const tracks = kind === 'audio' ? app.local?.stream.getAudioTracks() : app.local?.stream.getVideoTracks();
  if (!tracks?.length) return;
  const on = !tracks[0].enabled;
  for (const t of tracks) t.enabled = on;
  renderToggles();
  if (kind === 'audio') announce(on ? 'Your microphone is on.' : 'Your microphone is off. The clinic cannot hear you.');
  else announce(on ? 'Your camera is on.' : 'Your camera is off. The clinic cannot see you.');
}

// --- the end --------------------------------------------------------------------------------------------

function showEnded(reason) {
  if (app.screen === 'ended') return;
  app.ended = reason;
  clearInterval(waitedTimer);
  app.joinRetry.cancel();
  quality.stop();
  media.close();
  removeRemoteVideo($('remote'));
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
  $('check-retry').addEventListener('click', startCheck);
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
  $('back-to-check').addEventListener('click', startCheck);
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

  $('mute').addEventListener('click', () => toggle('audio'));
  $('camera').addEventListener('click', () => toggle('video'));
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
    startCheck();
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
  const here = readJson('session', SESSION_KEY);
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
  startCheck();
}

start();
