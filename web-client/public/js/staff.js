// The staff page (/staff): sign-in, then the live board of the clinics a person works in.
//
//   reception  sees each waiting room (name, status, connected or not, live wait time),
//              hears and sees arrivals, messages, admits to a chosen clinician, sends back
//              to waiting, transfers, removes;
//   clinician  calls the next patient or a chosen one, and runs the call (staff-call.js):
//              mute, camera, screen share, invite a third person (from the waiting room or
//              by a new link), send back, transfer, end;
//   admin      sees every clinic and can do what reception does, and end any call.
//
// Everyone in a call has a badge saying how their video reaches the video service
// (media-path.js: direct over UDP or TCP, or relayed over UDP, TCP or TLS), as their
// browser reported it: on the board, and in the clinician's call panel ("You" included).
//
// State comes only from the server: the websocket (signalling.js) sends a snapshot of each
// clinic on every (re)connection, then changes; the page re-renders from what it holds.
// Commands go over the same websocket. `window.consultStaff` exposes state to tests.

import { PATH_LABEL, PATH_MEANING } from './media-path.js';
import { showCallQuality } from './staff-quality.js';
import { Signalling } from './signalling.js';
import { StaffCall } from './staff-call.js';
import { ask, invalid, isOpen, update } from './staff-dialog.js';
import {
  $, h, sr, api, clearLiveRegions, clearSession, clock, copyText, duration, ENDED, endSignIn, EXPIRED, explain,
  INVALID,
  keepFresh, loadSession, oidcProvider, ROLE_NAMES, takeNote, takeOidcSignIn, wireSignIn,
} from './staff-common.js';

const SOUND_KEY = 'consult.staff.sound';
const FRESH_MS = 90_000; // how long an arrival stays highlighted

const app = {
  auth: null, // {token, expires_at, session}
  me: null, // the websocket's welcome session
  sig: null,
  socket: 'closed',
  socketExpires: 0, // expiry of the token the open websocket was authenticated with
  reconnectTimer: null,
  droppedAt: null,
  stopFresh: null,
  clinics: new Map(), // id -> {id, name, visits: Map, consultations: Map}
  names: new Map(), // clinician username -> display name
  clinicians: new Map(), // clinic id -> [{username, display_name}]
  seen: new Set(), // visits already known (no arrival alert for them)
  snapshotted: new Set(), // clinics that had a snapshot: later unseen visits are arrivals
  fresh: new Map(), // visit id -> when it arrived (highlighted until FRESH_MS)
  active: null, // the consultation in the call panel (a clinician's own)
  activeClinic: null,
  callEnded: false,
  focusCall: false,
  expectCall: false, // I just called someone in: their new call takes over the panel
  sound: readSound(),
  chimes: 0,
  log: [], // message types in and out, for tests and diagnostics (no tokens, no names)
};

const call = new StaffCall({
  send: (msg) => {
    note('out', msg);
    return app.sig?.send(msg) ?? false;
  },
  label: () => {
    const people = activePeople();
    return people.length === 1 ? `Video of ${people[0].name}` : 'Video of a participant';
  },
  who: () => {
    const people = activePeople();
    return people.length === 1 ? people[0].name : '';
  },
  onChange: () => renderCallPanel(),
});

window.consultStaff = {
  state: () => ({
    view: $('board-view').hidden ? 'sign-in' : 'board',
    role: app.me?.role ?? null,
    socket: app.socket,
    clinics: [...app.clinics.values()].map((c) => ({
      id: c.id,
      name: c.name,
      waiting: visitsOf(c, 'waiting').map((v) => ({ id: v.id, name: v.name, online: v.online })),
      inConsultation: visitsOf(c, 'in_consultation').map((v) => ({ id: v.id, name: v.name, consultation: v.status.consultation, mediaPath: v.media_path ?? null })),
      consultations: [...c.consultations.values()],
    })),
    ...call.state(),
    callEnded: app.callEnded,
    arrival: $('arrival').textContent,
    feedback: $('feedback').textContent,
    failure: $('failure').textContent,
    connection: $('conn').textContent,
    signInError: $('sign-in-error').textContent,
    signInNote: $('sign-in-note').textContent,
    chimes: app.chimes,
    sound: app.sound,
  }),
  stats: () => call.stats(),
  messages: () => app.log.slice(),
};

// --- start, sign-in, sign-out ------------------------------------------------------------------

wireSignIn($('sign-in-form'), $('sign-in-error'), (s) => start(s, true));
$('sign-out').addEventListener('click', () => {
  endSignIn(app.auth?.token);
  signOut('You have signed out.', 'ok');
});
$('sound').addEventListener('click', () => {
  app.sound = !app.sound;
  try {
    localStorage.setItem(SOUND_KEY, app.sound ? 'on' : 'off');
  } catch {
    // not kept
  }
  renderAccount();
  say(app.sound ? 'Sound alerts are on.' : 'Sound alerts are off. Arrivals are still shown and announced.');
  if (app.sound) chime();
});
$('end').addEventListener('click', () => endDialog());
$('sound-only-call').addEventListener('click', () => toggleSoundOnly());
$('invite').addEventListener('click', () => {
  const cl = app.clinics.get(app.activeClinic);
  if (cl) inviteDialog(cl);
});

function showSignIn(text, kind = 'warn') {
  $('board-view').hidden = true;
  clearLiveRegions($('board-view'));
  $('account').hidden = true;
  $('sign-in-view').hidden = false;
  const n = $('sign-in-note');
  n.textContent = text || '';
  n.className = `notice ${kind}`;
  document.title = 'Staff sign-in – Consult';
}

function start(auth, interactive) {
  app.auth = auth;
  app.me = { ...auth.session, kind: 'staff' };
  $('sign-in-view').hidden = true;
  clearLiveRegions($('sign-in-view'));
  $('board-view').hidden = false;
  renderAccount();
  renderBoard();
  connect();
  app.stopFresh = keepFresh(auth, {
    onFresh: (s) => {
      app.auth = s;
      reconnectWhenFree();
    },
    onLost: (text) => signOut(text),
  });
  if (interactive) $('board-h').focus();
}

function signOut(text, kind = 'warn') {
  app.stopFresh?.();
  clearTimeout(app.reconnectTimer);
  call.stop();
  const sig = app.sig;
  app.sig = null;
  sig?.close();
  clearSession();
  Object.assign(app, { auth: null, me: null, socket: 'closed', active: null, activeClinic: null, callEnded: false });
  for (const m of [app.clinics, app.names, app.clinicians, app.fresh]) m.clear();
  app.seen.clear();
  app.snapshotted.clear();
  for (const id of ['arrival', 'feedback', 'failure', 'conn']) $(id).textContent = '';
  $('clinics').replaceChildren();
  $('call').hidden = true;
  showSignIn(text, kind);
  $('username').focus();
}

// --- the websocket ------------------------------------------------------------------------------

function connect() {
  const token = app.auth.token;
  const sig = new Signalling({
    token,
    onMessage: (msg) => app.sig === sig && onMessage(msg),
    onState: (s) => app.sig === sig && onSocket(s, token),
  });
  app.sig = sig;
  app.socketExpires = app.auth.expires_at;
  sig.connect();
}

/**
 * A fresh token is only used by a new websocket. Reconnecting drops a call's media, so
 * during a call it waits until the call is over, or until shortly before the old token
 * expires (the media then rejoins by itself).
 */
function reconnectWhenFree() {
  clearTimeout(app.reconnectTimer);
  const now = () => {
    const old = app.sig;
    connect();
    old?.close();
  };
  if (!call.media.active) return now();
  app.reconnectTimer = setTimeout(now, Math.max(0, app.socketExpires - Date.now() - 30_000));
}

function onSocket({ state, fatal }, token) {
  app.socket = state;
  call.socket(state === 'open');
  if (state === 'open') {
    app.droppedAt = null;
    $('conn').textContent = '';
  } else if (state === 'reconnecting') {
    app.droppedAt ??= Date.now();
    $('conn').textContent =
      Date.now() - app.droppedAt > 8_000
        ? 'Cannot reach the server. Check your network connection; this page keeps trying. The board may be out of date.'
        : 'The connection to the server dropped. Reconnecting… The board may be out of date until it is back.';
  } else if (state === 'closed' && fatal) {
    // The old token ran out before the page switched to its fresh one (timers in a
    // background tab can run late): switch now.
    if (fatal.code === 'token_expired' && app.auth && app.auth.token !== token && app.auth.expires_at > Date.now()) {
      connect();
      return;
    }
    signOut(fatal.code === 'token_expired' ? EXPIRED : fatal.code === 'session_ended' ? ENDED : INVALID);
  }
}

function note(dir, msg) {
  const e = { dir, type: msg.type, at: Date.now() };
  if (msg.command?.type) e.command = msg.command.type;
  for (const k of ['code', 'reason', 'consultation']) if (typeof msg[k] === 'string') e[k] = msg[k];
  app.log.push(e);
  if (app.log.length > 300) app.log.shift();
}

function onMessage(msg) {
  note('in', msg);
  if (call.handle(msg)) return;
  switch (msg.type) {
    case 'welcome':
      app.me = msg.session;
      call.resume();
      // Each clinic's snapshot follows and replaces what is shown; clinics no longer
      // assigned go now (admins are sent every clinic).
      if (app.me.role !== 'admin') {
        for (const id of app.clinics.keys()) if (!app.me.clinics.includes(id)) app.clinics.delete(id);
      }
      chooseCall();
      renderAccount();
      renderBoard();
      break;
    case 'clinic_snapshot': {
      const id = msg.clinic.id;
      const cl = { id, name: msg.clinic.name, visits: new Map(), consultations: new Map() };
      for (const v of msg.visits) cl.visits.set(v.id, v);
      for (const c of msg.consultations) cl.consultations.set(c.id, c);
      app.clinics.set(id, cl);
      const arrivals = app.snapshotted.has(id) ? msg.visits.filter((v) => !app.seen.has(v.id) && v.status.state === 'waiting') : [];
      for (const v of msg.visits) app.seen.add(v.id);
      app.snapshotted.add(id);
      if (arrivals.length) arrived(cl, arrivals);
      loadClinicians(id).catch(() => {}); // names only: usernames show until they load
      chooseCall();
      renderBoard();
      break;
    }
    case 'visit_updated': {
      const cl = app.clinics.get(msg.clinic);
      if (!cl) break;
      cl.visits.set(msg.visit.id, msg.visit);
      if (!app.seen.has(msg.visit.id)) {
        app.seen.add(msg.visit.id);
        if (msg.visit.status.state === 'waiting') arrived(cl, [msg.visit]);
      }
      renderBoard();
      break;
    }
    case 'visit_presence': {
      // Presence lives outside the room: only `online` changes, for many visits at once.
      const cl = app.clinics.get(msg.clinic);
      if (!cl) break;
      for (const [ids, online] of [[msg.online, true], [msg.offline, false]]) {
        for (const id of ids) {
          const v = cl.visits.get(id);
          if (v) v.online = online;
        }
      }
      renderBoard();
      break;
    }
    case 'visit_closed': {
      const cl = app.clinics.get(msg.clinic);
      const v = cl?.visits.get(msg.visit);
      if (!cl || !v) break;
      cl.visits.delete(msg.visit);
      app.fresh.delete(msg.visit);
      if (msg.reason === 'left') say(`${v.name} left the ${cl.name} waiting room.`);
      renderBoard();
      break;
    }
    case 'consultation_updated': {
      const cl = app.clinics.get(msg.clinic);
      if (!cl) break;
      const isNew = !cl.consultations.has(msg.consultation.id);
      cl.consultations.set(msg.consultation.id, msg.consultation);
      chooseCall(isNew ? msg.consultation.id : null);
      renderBoard();
      break;
    }
    case 'consultation_ended': {
      const cl = app.clinics.get(msg.clinic);
      if (!cl) break;
      cl.consultations.delete(msg.consultation);
      chooseCall();
      renderBoard();
      break;
    }
    case 'error':
      // Fatal errors (sign-in over) close the socket: onSocket handles them.
      if (!['unauthenticated', 'token_expired'].includes(msg.code)) fail(explain(msg.code, msg.message));
      break;
    default:
      break;
  }
}

async function loadClinicians(clinic, force = false) {
  if (app.clinicians.has(clinic) && !force) return app.clinicians.get(clinic);
  try {
    const list = await api(`/api/clinics/${encodeURIComponent(clinic)}/clinicians`, { token: app.auth.token });
    app.clinicians.set(clinic, list);
    for (const c of list) app.names.set(c.username, c.display_name);
    renderBoard();
    return list;
  } catch (e) {
    if (e.authLost) signOut(e.message);
    throw e;
  }
}

// --- the clinician's call -----------------------------------------------------------------------

/** My consultations, oldest first, as {clinic, view}. */
function myConsultations() {
  if (app.me?.role !== 'clinician') return [];
  const out = [];
  for (const cl of app.clinics.values()) {
    for (const c of cl.consultations.values()) if (c.clinician === app.me.username) out.push({ clinic: cl.id, view: c });
  }
  return out.sort((a, b) => a.view.started_at - b.view.started_at);
}

/**
 * Which of my consultations the call panel shows: a new one if I just called someone in
 * (or was in no call), else the current one while it lasts, else the oldest; the media
 * follows it. Someone admitted to me by reception while I am in a call waits in a call
 * of their own until I switch to it or this one ends.
 */
function chooseCall(newId = null) {
  const mine = myConsultations();
  const had = app.active;
  const added = newId ? mine.find((m) => m.view.id === newId) : null;
  const take = added && (!had || app.expectCall) ? added : null;
  if (added) {
    const cl = app.clinics.get(added.clinic);
    const names = added.view.visits.map((id) => cl.visits.get(id)?.name).filter(Boolean).join(', ') || 'A patient';
    // Focus moves to the call only when the clinician asked for it.
    if (app.expectCall) app.focusCall = true;
    else if (!had) say(`${names} has been admitted to you in ${cl.name}: the call is starting.`);
    else say(`${names} has been admitted to you in ${cl.name} and waits in a call of their own. Choose “Switch to this call” next to their name when you are ready.`);
    app.expectCall = false;
  }
  const pick = take || mine.find((m) => m.view.id === had) || mine[0] || null;
  app.active = pick?.view.id ?? null;
  app.activeClinic = pick?.clinic ?? null;
  if (had && !mine.some((m) => m.view.id === had)) {
    app.callEnded = !app.active;
    if (!(Date.now() - saidAt < 3_000 && /has ended/.test($('feedback').textContent))) sayAlso('The call has ended.');
  }
  if (app.active && app.active !== had) app.callEnded = false;
  call.want(app.active);
}

function switchCall(id) {
  call.prepare(); // the press: the browser may ask for the camera and microphone now
  app.active = id;
  app.activeClinic = myConsultations().find((m) => m.view.id === id)?.clinic ?? null;
  app.focusCall = true;
  call.want(id);
  renderBoard();
}

function activePeople() {
  const cl = app.clinics.get(app.activeClinic);
  const c = cl?.consultations.get(app.active);
  return c ? c.visits.map((id) => cl.visits.get(id)).filter(Boolean) : [];
}

function renderCallPanel() {
  const cl = app.clinics.get(app.activeClinic);
  const panel = $('call');
  const show = !!(app.active && cl);
  if (panel.hidden === show) panel.hidden = !show;
  if (!show) {
    // Nothing of the last call stays behind in the hidden panel's live region.
    call.say('');
    return;
  }
  $('call-h').textContent = `Your call in ${cl.name}`;
  const people = activePeople();
  const cons = cl.consultations.get(app.active);
  const soundOnly = !!cons?.audio_only;
  call.setCallSoundOnly(soundOnly);
  const toggle = $('sound-only-call');
  toggle.setAttribute('aria-pressed', String(soundOnly));
  toggle.textContent = soundOnly ? 'Turn video back on for everyone' : 'Sound only for everyone';
  const items = people.map((v) =>
    h('li', { class: 'person', 'data-visit': v.id },
      h('p', { class: 'name' }, v.name, ' ', onlineBadge(v), ' ', pathBadge(v.media_path, v.online)),
      h('div', { class: 'row' },
        button(cl, v, 'back', 'Send back to waiting', () => returnToWaiting(cl, v)),
        button(cl, v, 'transfer', 'Transfer…', () => transferDialog(cl, v)),
      )));
  if (cons?.clinician_path) {
    items.unshift(h('li', { class: 'person me' }, h('p', { class: 'name' }, 'You', ' ', pathBadge(cons.clinician_path))));
  }
  items.push(h('li', { class: 'hint' }, 'To bring in someone who is waiting (an interpreter, a relative), choose “Add to call” next to their name below.'));
  $('call-people').replaceChildren(...items);
  if (app.focusCall && !isOpen()) {
    app.focusCall = false;
    $('call-h').focus();
  }
}

// --- the board -------------------------------------------------------------------------------------

const can = {
  admitOther: () => ['reception', 'admin'].includes(app.me?.role),
  remove: () => ['reception', 'admin'].includes(app.me?.role),
  callIn: () => app.me?.role === 'clinician',
  invite: () => ['clinician', 'admin'].includes(app.me?.role),
  endAny: () => app.me?.role === 'admin',
};

function visitsOf(cl, state) {
  return [...cl.visits.values()].filter((v) => v.status.state === state).sort((a, b) => a.arrived_at - b.arrived_at);
}

function nameOf(username) {
  if (!username) return 'a clinician';
  if (username === app.me?.username) return 'you';
  return app.names.get(username) || username;
}

function renderAccount() {
  const me = app.me;
  $('account').hidden = !me;
  if (!me) return;
  $('who').textContent = `${me.display_name} (${ROLE_NAMES[me.role] || me.role})`;
  $('admin-link').hidden = me.role !== 'admin';
  $('sound').setAttribute('aria-pressed', String(app.sound));
}

function renderBoard() {
  // An arrival stays highlighted while it waits; the alert goes when none does.
  for (const id of app.fresh.keys()) {
    if (![...app.clinics.values()].some((c) => c.visits.get(id)?.status.state === 'waiting')) app.fresh.delete(id);
  }
  if (!app.fresh.size && $('arrival').textContent) $('arrival').textContent = '';
  keepFocus(() => {
    const box = $('clinics');
    const clinics = [...app.clinics.values()].sort((a, b) => a.name.localeCompare(b.name));
    if (!clinics.length) {
      const none = app.socket === 'open' && app.me && !app.me.clinics?.length && app.me.role !== 'admin';
      box.replaceChildren(h('p', { class: 'notice' }, none
        ? 'You are not assigned to any clinic yet. Ask an administrator to add you to one.'
        : 'Loading the waiting rooms…'));
    } else {
      box.replaceChildren(...clinics.map(renderClinic));
    }
    renderCallPanel();
  });
  const waiting = [...app.clinics.values()].reduce((n, c) => n + visitsOf(c, 'waiting').length, 0);
  document.title = `${waiting ? `(${waiting}) ` : ''}Waiting rooms – Consult`;
}

function renderClinic(cl) {
  const waiting = visitsOf(cl, 'waiting');
  const inCall = visitsOf(cl, 'in_consultation');
  const hid = `clinic-${cl.id}`;
  const key = (a) => `${cl.id}/:${a}`;
  return h('section', { class: 'clinic card', 'aria-labelledby': hid, 'data-clinic': cl.id },
    h('div', { class: 'clinic-head' },
      h('h2', { id: hid, tabindex: '-1' }, cl.name),
      h('p', { class: 'muted' }, `${waiting.length} waiting · ${inCall.length} in consultation`),
      h('div', { class: 'row' },
        can.callIn() && h('button', { type: 'button', class: 'primary', 'data-key': key('next'), onclick: () => admitNext(cl) }, 'Call next patient', sr(` in ${cl.name}`)),
        can.invite() && h('button', { type: 'button', 'data-key': key('invite'), onclick: () => inviteDialog(cl) }, 'Invite link…', sr(` for ${cl.name}`)),
        h('button', { type: 'button', 'data-key': key('quality'), onclick: () => showCallQuality(cl, app.auth.token, () => $(`clinic-${cl.id}`)) }, 'Call quality…', sr(` in ${cl.name}`)),
      )),
    h('h3', {}, 'Waiting'),
    waiting.length ? h('ol', { class: 'visits' }, waiting.map((v) => visitCard(cl, v))) : h('p', { class: 'muted' }, 'Nobody is waiting.'),
    h('h3', {}, 'In consultation'),
    inCall.length ? h('ul', { class: 'visits' }, inCall.map((v) => visitCard(cl, v))) : h('p', { class: 'muted' }, 'No consultations under way.'),
  );
}

function button(cl, v, action, label, onclick, cls) {
  return h('button', { type: 'button', class: cls, 'data-key': `${cl.id}/${v.id}:${action}`, onclick }, label, sr(` ${v.name}`));
}

function onlineBadge(v) {
  return h('span', { class: `badge ${v.online ? 'online' : 'offline'}` }, v.online ? 'Connected' : 'Not connected');
}

/**
 * How someone's video reaches the video service, as their browser said (nothing yet, or
 * while they are not connected: what it last said may no longer hold).
 */
function pathBadge(path, online = true) {
  if (!PATH_LABEL[path] || !online) return null;
  return h('span', { class: `badge path ${path.startsWith('turn') ? 'relayed' : 'direct'}`, 'data-path': path, title: PATH_MEANING[path] },
    `Video: ${PATH_LABEL[path]}`);
}

function visitCard(cl, v) {
  const waiting = v.status.state === 'waiting';
  const cons = waiting ? null : cl.consultations.get(v.status.consultation);
  const mine = cons?.clinician === app.me?.username;
  const fresh = app.fresh.has(v.id);
  const since = waiting ? v.arrived_at : cons?.started_at ?? v.arrived_at;
  const actions = [];
  if (waiting) {
    if (can.callIn()) {
      actions.push(button(cl, v, 'callin', 'Call in', () => callIn(cl, v), 'primary'));
      if (app.active && app.activeClinic === cl.id) actions.push(button(cl, v, 'add', 'Add to call', () => addToCall(cl, v)));
    }
    if (can.admitOther()) actions.push(button(cl, v, 'admit', 'Admit…', () => admitDialog(cl, v), 'primary'));
    actions.push(button(cl, v, 'message', 'Message…', () => messageDialog(cl, v)));
    actions.push(button(cl, v, 'transfer', 'Transfer…', () => transferDialog(cl, v)));
    if (can.remove()) actions.push(button(cl, v, 'remove', 'Remove…', () => removeDialog(cl, v)));
  } else if (mine) {
    if (cons.id !== app.active) actions.push(button(cl, v, 'switch', 'Switch to this call', () => switchCall(cons.id), 'primary'));
  } else {
    if (can.admitOther()) actions.push(button(cl, v, 'back', 'Send back to waiting', () => returnToWaiting(cl, v)));
    // Reception and admins may switch a colleague's call to sound only (the patient's link
    // cannot carry video), or back.
    if (can.admitOther() && cons) {
      actions.push(button(cl, v, 'sound', cons.audio_only ? 'Turn video back on' : 'Sound only', () => toggleSoundOnly(cl, cons)));
    }
    if (can.endAny() && cons) actions.push(button(cl, v, 'end', 'End call…', () => endDialog(cl, cons)));
    if (can.remove()) actions.push(button(cl, v, 'remove', 'Remove…', () => removeDialog(cl, v)));
  }
  const extra = [
    v.appointment && `Appointment ${v.appointment}`,
    v.for_clinician && `For ${nameOf(v.for_clinician)}`,
  ].filter(Boolean);
  return h('li', { class: `visit${fresh ? ' is-new' : ''}`, 'data-visit': v.id },
    h('div', { class: 'who' },
      h('h4', { class: 'name' }, v.name, fresh && h('span', { class: 'badge new' }, 'New')),
      h('p', { class: 'meta' },
        waiting
          ? h('span', { class: 'badge waiting' }, 'Waiting')
          : h('span', { class: 'badge in-call' }, mine ? 'In your call' : `In consultation with ${nameOf(cons?.clinician)}`),
        onlineBadge(v),
        !waiting && pathBadge(v.media_path, v.online),
        cons?.audio_only && h('span', { class: 'badge sound-only' }, 'Sound only'),
        h('span', {}, waiting ? 'Waited ' : 'For ', h('span', { 'data-since': since }, duration(Date.now() - since)),
          h('span', { class: 'muted' }, ` (${waiting ? 'arrived' : 'since'} ${clock(since)})`)),
        ...extra.map((t) => h('span', {}, t))),
      v.details && h('p', { class: 'details' }, v.details)),
    actions.length ? h('div', { class: 'row actions' }, actions) : null,
  );
}

/**
 * Runs a re-render without losing the keyboard user's place: the focused control is found
 * again by its data-key; if it is gone, its clinic's heading (or the board's) takes focus.
 */
function keepFocus(render) {
  const before = document.activeElement;
  const key = before?.dataset?.key;
  render();
  const now = document.activeElement;
  if (now && now !== document.body && now.isConnected && now.offsetParent !== null) return;
  if (!before || before === document.body || (before.isConnected && before.offsetParent !== null)) return;
  // The same control, else another control for the same patient.
  const again = key && (document.querySelector(`[data-key="${CSS.escape(key)}"]`)
    || document.querySelector(`[data-key^="${CSS.escape(key.split(':')[0])}:"]`));
  if (again) return again.focus();
  if (isOpen()) return;
  const clinic = key?.split('/')[0] ?? app.activeClinic;
  const next = clinic && document.querySelector(`[data-key="${CSS.escape(`${clinic}/:next`)}"]`);
  (next || (clinic && $(`clinic-${clinic}`)) || $('board-h')).focus();
}

// --- arrivals -------------------------------------------------------------------------------------

function arrived(cl, visits) {
  const now = Date.now();
  for (const v of visits) app.fresh.set(v.id, now);
  const names = visits.map((v) => v.name).join(', ');
  $('arrival').textContent =
    visits.length === 1
      ? `New arrival in ${cl.name}: ${names} (${clock(now)}).`
      : `${visits.length} new arrivals in ${cl.name}: ${names} (${clock(now)}).`;
  // Not during a call: the clinician is talking to someone.
  if (app.sound && !call.media.active) chime();
}

let audioCtx = null;
function audio() {
  const AC = window.AudioContext || window.webkitAudioContext;
  if (!AC) return null;
  audioCtx ||= new AC();
  if (audioCtx.state === 'suspended') audioCtx.resume().catch(() => {});
  return audioCtx;
}
// Browsers only let sound start after the person has interacted with the page.
for (const ev of ['pointerdown', 'keydown']) document.addEventListener(ev, audio, { once: true, capture: true });

/** Two short soft tones. */
function chime() {
  app.chimes += 1;
  const ctx = audio();
  if (!ctx) return;
  const t = ctx.currentTime + 0.02;
  for (const [at, freq] of [[0, 880], [0.2, 1320]]) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, t + at);
    gain.gain.exponentialRampToValueAtTime(0.25, t + at + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, t + at + 0.18);
    osc.connect(gain).connect(ctx.destination);
    osc.start(t + at);
    osc.stop(t + at + 0.2);
  }
}

function readSound() {
  try {
    return localStorage.getItem(SOUND_KEY) !== 'off';
  } catch {
    return true;
  }
}

// Live wait times, and the end of arrivals' highlight.
setInterval(() => {
  const now = Date.now();
  for (const el of document.querySelectorAll('[data-since]')) {
    const t = duration(now - Number(el.dataset.since));
    if (el.textContent !== t) el.textContent = t;
  }
  let expired = false;
  for (const [id, at] of app.fresh) {
    if (now - at > FRESH_MS) {
      app.fresh.delete(id);
      expired = true;
    }
  }
  if (expired) renderBoard();
}, 5_000);

// --- actions ---------------------------------------------------------------------------------------

let saidAt = 0;
function say(text) {
  saidAt = Date.now();
  $('failure').textContent = '';
  $('feedback').textContent = text;
}

/** Adds to what was just said (an action and its consequence), else says it. */
function sayAlso(text) {
  const now = $('feedback').textContent;
  if (now && Date.now() - saidAt < 3_000 && !now.includes(text)) $('feedback').textContent = `${now} ${text}`;
  else if (!now.includes(text)) say(text);
}

function fail(text) {
  $('feedback').textContent = '';
  $('failure').textContent = text;
}

/** Sends a command; resolves with whether it was carried out (errors are shown). */
async function command(cmd, done) {
  try {
    await sendCommand(cmd);
    if (done) say(done);
    return true;
  } catch (e) {
    fail(e.message);
    return false;
  }
}

/** Sends a command; throws an Error in plain English if refused. */
async function sendCommand(cmd) {
  if (!app.sig) throw new Error(explain('unavailable'));
  note('out', { type: 'command', command: cmd });
  try {
    await app.sig.command(cmd);
  } catch (e) {
    throw new Error(explain(e.code, e.message));
  }
}

/** A call of mine is coming (I called someone in): the camera starts with the press. */
function expectCall() {
  app.expectCall = true;
  call.prepare();
}

/** ... or not: the command was refused. */
function noCall() {
  app.expectCall = false;
  call.unprepare();
}

function admitNext(cl) {
  expectCall();
  command({ type: 'admit_next', clinic: cl.id }, `Calling in the next patient from ${cl.name}…`).then((ok) => ok || noCall());
}

function callIn(cl, v) {
  expectCall();
  command({ type: 'admit', clinic: cl.id, visit: v.id, clinician: app.me.username }, `Calling in ${v.name}…`).then((ok) => ok || noCall());
}

function addToCall(cl, v) {
  const c = cl.consultations.get(app.active);
  if (!c) return fail('Your call has ended, so nobody can be added to it.');
  command(
    { type: 'admit', clinic: cl.id, visit: v.id, clinician: app.me.username, consultation: c.id },
    `${v.name} is joining your call.`,
  );
}

function returnToWaiting(cl, v) {
  command({ type: 'return_to_waiting', clinic: cl.id, visit: v.id }, `${v.name} is back in the ${cl.name} waiting room, in the same place.`);
}

const field = (id, label, control, hint) => {
  if (hint) control.setAttribute('aria-describedby', `${id}-hint`);
  return h('div', { class: 'field' },
    h('label', { for: id }, label),
    hint && h('p', { class: 'hint', id: `${id}-hint` }, hint),
    control);
};

async function admitDialog(cl, v) {
  let list;
  try {
    list = await loadClinicians(cl.id, true);
  } catch (e) {
    return fail(e.message);
  }
  if (!list.length) return fail(`No clinician works in ${cl.name} yet, so nobody can be admitted. An administrator can add one.`);
  const busy = new Set([...cl.consultations.values()].map((c) => c.clinician));
  const select = h('select', { id: 'dlg-clinician', name: 'clinician', autofocus: true },
    list.map((c) => h('option', { value: c.username }, c.display_name + (busy.has(c.username) ? ' (in a call)' : ''))));
  ask({
    title: `Admit ${v.name}`,
    body: [
      field('dlg-clinician', 'Clinician', select, 'The patient’s call starts at once; the clinician’s page joins it.'),
    ],
    okLabel: 'Admit',
    submit: async () => {
      const c = list.find((x) => x.username === select.value);
      await sendCommand({ type: 'admit', clinic: cl.id, visit: v.id, clinician: select.value });
      say(`${v.name} admitted to ${c?.display_name ?? select.value}.`);
    },
    fallback: () => $(`clinic-${cl.id}`),
  });
}

function messageDialog(cl, v) {
  const text = h('textarea', { id: 'dlg-text', name: 'text', rows: '4', maxlength: '1000', autofocus: true });
  ask({
    title: `Message ${v.name}`,
    body: [field('dlg-text', 'Message', text, 'Shown on their screen at once. Keep it short and free of clinical details.')],
    okLabel: 'Send message',
    submit: async () => {
      const t = text.value.trim();
      if (!t) invalid(text, 'Write a message first.');
      await sendCommand({ type: 'send_message', clinic: cl.id, visit: v.id, text: t });
      say(`Message sent to ${v.name}.`);
    },
    fallback: () => $(`clinic-${cl.id}`),
  });
}

async function transferDialog(cl, v) {
  let colleagues = [];
  try {
    colleagues = (await loadClinicians(cl.id, true)).filter((c) => c.username !== app.me.username);
  } catch (e) {
    return fail(e.message);
  }
  const clinics = (app.me.role === 'admin' ? [...app.clinics.keys()] : app.me.clinics).filter((id) => id !== cl.id);
  if (!colleagues.length && !clinics.length) {
    return fail(`There is nobody to transfer ${v.name} to: no other clinician works in ${cl.name}, and you work in no other clinic.`);
  }
  const select = h('select', { id: 'dlg-target', name: 'target', autofocus: true },
    colleagues.length && h('optgroup', { label: `A clinician in ${cl.name}` },
      colleagues.map((c) => h('option', { value: `clinician:${c.username}` }, c.display_name))),
    clinics.length && h('optgroup', { label: 'Another clinic’s waiting room' },
      clinics.map((id) => h('option', { value: `clinic:${id}` }, app.clinics.get(id)?.name ?? id))));
  ask({
    title: `Transfer ${v.name}`,
    body: [field('dlg-target', 'Transfer to', select, 'They go back to waiting, keeping their place: for that clinician only, or in the other clinic’s waiting room.')],
    okLabel: 'Transfer',
    submit: async () => {
      const [kind, id] = select.value.split(/:(.*)/);
      const to = kind === 'clinic' ? { kind, clinic: id } : { kind, clinician: id };
      await sendCommand({ type: 'transfer', clinic: cl.id, visit: v.id, to });
      say(`${v.name} transferred to ${select.selectedOptions[0].textContent}.`);
    },
    fallback: () => $(`clinic-${cl.id}`),
  });
}

function removeDialog(cl, v) {
  ask({
    title: `Remove ${v.name}?`,
    body: [h('p', {}, `${v.name} will be taken out of the ${cl.name} waiting room and told that their visit has ended. To be seen, they would need to join again.`)],
    okLabel: 'Remove',
    danger: true,
    submit: async () => {
      await sendCommand({ type: 'remove', clinic: cl.id, visit: v.id });
      say(`${v.name} was removed from the ${cl.name} waiting room.`);
    },
    fallback: () => $(`clinic-${cl.id}`),
  });
}

/** Switches a call (by default the one on show) to sound only for everyone in it, or back. */
async function toggleSoundOnly(clArg, consArg) {
  const cl = clArg || app.clinics.get(app.activeClinic);
  const cons = consArg || cl?.consultations.get(app.active);
  if (!cl || !cons) return;
  const on = !cons.audio_only;
  try {
    await sendCommand({ type: 'set_audio_only', clinic: cl.id, consultation: cons.id, on });
    say(on ? 'The call is now sound only: nobody sends or receives video.' : 'Video is back on for everyone in the call.');
  } catch (e) {
    say(`The call could not be switched: ${e.message}`);
  }
}

function endDialog(clArg, consArg) {
  const cl = clArg || app.clinics.get(app.activeClinic);
  const cons = consArg || cl?.consultations.get(app.active);
  if (!cl || !cons) return;
  const names = cons.visits.map((id) => cl.visits.get(id)?.name).filter(Boolean).join(', ') || 'the patient';
  ask({
    title: 'End the call?',
    body: [h('p', {}, `The call with ${names} ends for everyone in it, and their visit ends. To send someone back to the waiting room instead, choose “Send back to waiting”.`)],
    okLabel: 'End call',
    danger: true,
    submit: async () => {
      await sendCommand({ type: 'end_consultation', clinic: cl.id, consultation: cons.id });
      say(`The call with ${names} has ended.`);
    },
    fallback: () => $(`clinic-${cl.id}`),
  });
}

function inviteDialog(cl) {
  const who = h('input', { id: 'dlg-ref', name: 'ref', maxlength: '100', autocomplete: 'off', autofocus: true });
  const hours = h('select', { id: 'dlg-valid', name: 'valid' },
    [[1, '1 hour'], [4, '4 hours'], [24, '1 day'], [168, '1 week']].map(([v, t]) => h('option', { value: String(v), selected: v === 4 }, t)));
  ask({
    title: `Invite link for ${cl.name}`,
    body: [
      h('p', {}, 'A personal link for one person (an interpreter, a relative, a patient) to join this clinic’s waiting room.'),
      field('dlg-ref', 'Reference (optional)', who, 'Shown to staff next to their name, for example “Interpreter for Pat”.'),
      field('dlg-valid', 'Link works for', hours),
    ],
    okLabel: 'Create link',
    submit: async () => {
      let res;
      try {
        res = await api('/api/admin/invites', {
          method: 'POST',
          token: app.auth.token,
          body: { clinic: cl.id, appointment: who.value.trim() || undefined, valid_for_secs: Number(hours.value) * 3600 },
        });
      } catch (e) {
        if (e.authLost) signOut(e.message);
        throw e;
      }
      const link = h('input', { id: 'dlg-link', readonly: true, value: res.url });
      const status = h('p', { class: 'hint', role: 'status' });
      update({
        body: [
          field('dlg-link', 'Invite link', link,
            `Send it to them (works until ${clock(res.expires_at)}). When they open it they join the ${cl.name} waiting room; then choose “Add to call” next to their name.`),
          h('p', {}, h('button', { type: 'button', 'data-key': 'copy-link', onclick: async () => {
            status.textContent = (await copyText(res.url, link)) ? 'Link copied.' : 'Copying did not work: select the link and copy it.';
          } }, 'Copy link')),
          status,
        ],
        okLabel: 'Done',
        submit: async () => {},
      });
      link.focus();
      link.select();
      return 'keep';
    },
    fallback: () => $(`clinic-${cl.id}`),
  });
}

// --- start ------------------------------------------------------------------------------------------

oidcProvider().then((name) => {
  if (!name) return;
  $('oidc-start').textContent = `Sign in with ${name}`;
  $('oidc').hidden = false;
});

(async () => {
  let landed = null;
  try {
    landed = await takeOidcSignIn();
  } catch (e) {
    showSignIn(e.message);
    return;
  }
  if (landed) return start(landed, true);
  const stored = loadSession();
  if (!stored) showSignIn(takeNote());
  else if (stored.expires_at <= Date.now()) {
    clearSession();
    showSignIn(EXPIRED);
  } else start(stored, false);
})();
