// What the patient page's modules share: the page's state (`app`), the screens, the
// screen reader announcements, the REST helper and the diagnostics log.
//
// Screens: loading -> check -> details -> waiting -> call -> ended (or resume, error).
// Only one is shown; a screen that is hidden keeps no live text behind (screen readers
// would still reach it): `show()` empties the live regions of the screens it hides and
// the page's announcer.

export const $ = (id) => document.getElementById(id);

export const app = {
  entry: null, // {kind: 'open_link', clinic} | {kind: 'invite', token}
  entryKey: null,
  clinic: null, // {id, name}
  screen: 'loading',
  errorCode: null,
  devices: null, // LocalDevices (patient.js)
  check: { camera: 'off', microphone: 'off', heard: false, network: 'pending', via: null, rttMs: null },
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
  joinedOnce: false,
  announcements: [], // what was said to screen readers, for tests
  log: [], // message types and a few plain fields: never SDP, tokens or texts
  clockSkew: 0, // server time minus ours (ms), from a Date header
};

/** Keeps the type and a few plain fields of each websocket message, for diagnostics. */
export function note(dir, msg) {
  const entry = { dir, type: msg.type, at: Date.now() };
  for (const k of ['reason', 'connected', 'code', 'leg', 'stream']) {
    if (typeof msg[k] === 'string' || typeof msg[k] === 'boolean') entry[k] = msg[k];
  }
  for (const k of ['audio', 'video', 'screen']) if (typeof msg[k] === 'boolean') entry[k] = msg[k];
  if (msg.status?.state) entry.state = msg.status.state;
  if (msg.command?.type) entry.command = msg.command.type;
  app.log.push(entry);
  if (app.log.length > 300) app.log.shift();
}

let announceTimer = null;
let announcePending = '';
/** Says `text` to screen readers (the polite live region). */
export function announce(text) {
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

/** Empties the announcer: what it said belongs to the screen that was shown. */
function clearAnnouncer() {
  clearTimeout(announceTimer);
  announcePending = '';
  $('announce').textContent = '';
}

const LIVE = '[role="alert"], [role="status"], [aria-live]';

/** Empties (and hides) the live regions inside `section`. */
function clearLiveRegions(section) {
  for (const el of section.querySelectorAll(LIVE)) {
    if (!el.textContent) continue;
    el.replaceChildren();
    delete el.dataset.key;
    el.hidden = true;
  }
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

const TITLES = { check: 'Check your camera and sound', details: 'Your details', waiting: 'Waiting room', call: 'Video call', ended: 'Appointment ended', error: 'Problem', resume: 'Waiting room' };

/** Shows one screen (its heading takes focus, so screen readers read it). */
export function show(screen, { focus = true } = {}) {
  const changed = app.screen !== screen;
  app.screen = screen;
  keepAwake();
  if (changed) clearAnnouncer();
  for (const s of document.querySelectorAll('section[data-screen]')) {
    s.hidden = s.dataset.screen !== screen;
    if (s.hidden) clearLiveRegions(s);
  }
  document.body.dataset.page = screen;
  if (changed) {
    document.title = `${TITLES[screen] ?? 'Video appointment'} – ${app.clinic?.name ?? 'Video appointment'}`;
    if (focus) {
      const h = document.querySelector(`[data-screen="${screen}"] h1`);
      h?.focus({ preventScroll: false });
    }
    if (screen !== 'waiting') $('waiting-leave-confirm').hidden = true;
    if (screen !== 'call') $('call-leave-confirm').hidden = true;
  }
}

export function setClinic(clinic) {
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

/** A REST call: {ok: true, data} or {ok: false, code, message}; never throws. */
export async function api(method, path, body) {
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
