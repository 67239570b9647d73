// The administration page (/admin): the same operations as the `consult` command line.
// Create (or replace) clinics and staff, issue invite links, read the audit log. Only
// administrators get past the sign-in; others are sent to their waiting rooms.
//
// REST (admin only): GET/POST /api/admin/clinics, GET/POST /api/admin/staff,
// POST /api/admin/invites, GET /api/admin/audit?limit=N, GET /api/admin/media-nodes,
// POST /api/admin/media-nodes/{node}/drain and /resume.

import {
  $, h, api, clearLiveRegions, clearSession, clock, copyText, endSignIn, EXPIRED, keepFresh, loadSession, ROLE_NAMES,
  saveSession, showError, takeNote, wireSignIn,
} from './staff-common.js';

const ISSUED_KEY = 'consult.admin.invites';
const SLUG = /^[a-z0-9][a-z0-9._-]{0,63}$/;

const app = { auth: null, clinics: [], staff: [], audit: [], nodes: [], stopFresh: null };

window.consultAdmin = {
  state: () => ({
    view: ['sign-in-view', 'forbidden-view', 'admin-view'].find((id) => !$(id).hidden) ?? null,
    clinics: app.clinics.map((c) => c.id),
    staff: app.staff.map((s) => s.username),
    audit: app.audit.length,
    issued: issued().length,
    nodes: app.nodes.map((n) => ({ id: n.id, draining: n.draining, state: nodeState(n, Date.now()) })),
    feedback: $('feedback').textContent,
    failure: $('failure').textContent,
    signInError: $('sign-in-error').textContent,
    signInNote: $('sign-in-note').textContent,
  }),
};

// --- views -------------------------------------------------------------------------------------

function show(view) {
  for (const id of ['sign-in-view', 'forbidden-view', 'admin-view']) {
    $(id).hidden = id !== view;
    if (id !== view) clearLiveRegions($(id));
  }
  $('account').hidden = view === 'sign-in-view';
}

function showSignIn(text, kind = 'warn') {
  show('sign-in-view');
  const n = $('sign-in-note');
  n.textContent = text || '';
  n.className = `notice ${kind}`;
  document.title = 'Administration: sign in – Consult';
}

/** A sign-in kept from before: checked (and refreshed) with the server first. */
async function resume(stored) {
  try {
    start(await api('/api/staff/refresh', { method: 'POST', token: stored.token }), false);
  } catch (e) {
    if (e.authLost || e.code === 'forbidden') signOut(e.message);
    else start(stored, false); // the server is unreachable: the page says so when it loads
  }
}

function start(auth, interactive) {
  saveSession(auth);
  app.auth = auth;
  const me = auth.session;
  $('who').textContent = `${me.display_name} (${ROLE_NAMES[me.role] || me.role})`;
  $('sign-in-note').textContent = '';
  app.stopFresh?.();
  app.stopFresh = keepFresh(auth, { onFresh: (s) => (app.auth = s), onLost: (t) => signOut(t) });
  if (me.role !== 'admin') {
    show('forbidden-view');
    $('forbidden-text').textContent = `You are signed in as ${me.display_name} (${ROLE_NAMES[me.role] || me.role}). Ask an administrator if you need to create clinics or staff.`;
    document.title = 'Not available – Consult';
    if (interactive) $('forbidden-h').focus();
    return;
  }
  show('admin-view');
  document.title = 'Administration – Consult';
  if (interactive) $('admin-h').focus();
  renderIssued();
  reload(['clinics', 'staff', 'nodes', 'audit']);
}

function signOut(text, kind = 'warn') {
  app.stopFresh?.();
  app.auth = null;
  clearSession();
  showSignIn(text, kind);
  $('username').focus();
}

wireSignIn($('sign-in-form'), $('sign-in-error'), (s) => start(s, true));
$('sign-out').addEventListener('click', () => {
  endSignIn(app.auth?.token);
  signOut('You have signed out.', 'ok');
});
$('switch-user').addEventListener('click', () => {
  endSignIn(app.auth?.token);
  signOut('');
});

// --- data --------------------------------------------------------------------------------------

/** An authenticated request; a sign-in that is over sends the person back to sign in. */
async function call(path, opts = {}) {
  try {
    return await api(path, { ...opts, token: app.auth?.token });
  } catch (e) {
    if (e.authLost) signOut(e.message);
    throw e;
  }
}

async function reload(what) {
  const jobs = {
    clinics: async () => {
      app.clinics = (await call('/api/admin/clinics')).sort((a, b) => a.name.localeCompare(b.name));
      renderClinics();
    },
    staff: async () => {
      app.staff = (await call('/api/admin/staff')).sort((a, b) => a.username.localeCompare(b.username));
      renderStaff();
    },
    audit: async () => {
      app.audit = await call(`/api/admin/audit?limit=${$('audit-limit').value}`);
      renderAudit();
    },
    nodes: async () => {
      app.nodes = await call('/api/admin/media-nodes');
      renderNodes();
    },
  };
  const results = await Promise.allSettled(what.map((w) => jobs[w]()));
  const failed = results.find((r) => r.status === 'rejected');
  if (failed && app.auth) $('failure').textContent = `Could not load everything: ${failed.reason.message}`;
}

function table(caption, head, rows, empty) {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  return h('table', {},
    h('caption', { class: 'visually-hidden' }, caption),
    h('thead', {}, h('tr', {}, head.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c) => h('td', {}, c))))));
}

function renderClinics() {
  $('clinics-table').replaceChildren(table('Clinics', ['Code', 'Name', 'Open link'],
    app.clinics.map((c) => [c.id, c.name, c.open_link ? h('a', { href: `/c/${c.id}` }, `Yes: /c/${c.id}`) : 'No (invite only)']),
    'No clinics yet. Add the first one below.'));
  // The clinic pickers of the other forms.
  const box = $('staff-clinics');
  const ticked = new Set([...box.querySelectorAll('input:checked')].map((i) => i.value));
  box.replaceChildren(h('legend', {}, 'Clinics they work in'),
    ...(app.clinics.length
      ? app.clinics.map((c) => h('label', { class: 'check' },
        h('input', { type: 'checkbox', name: 'clinics', value: c.id, checked: ticked.has(c.id) }), `${c.name} (${c.id})`))
      : [h('p', { class: 'muted' }, 'Add a clinic first.')]));
  const sel = $('invite-clinic');
  const was = sel.value;
  sel.replaceChildren(...app.clinics.map((c) => h('option', { value: c.id, selected: c.id === was }, c.name)));
}

function renderStaff() {
  const names = new Map(app.clinics.map((c) => [c.id, c.name]));
  $('staff-table').replaceChildren(table('Staff', ['User name', 'Name', 'Role', 'Clinics'],
    app.staff.map((s) => [s.username, s.display_name, ROLE_NAMES[s.role] || s.role,
      s.role === 'admin' ? 'All' : s.clinics.map((c) => names.get(c) || c).join(', ') || 'None']),
    'No staff yet.'));
}

/** What a media server's record says of it, in words. */
function nodeState(n, now) {
  if (n.expires_at <= now) return 'Not answering';
  if (n.moving) return 'Moving its calls to other servers';
  if (n.draining) return 'Draining: no new calls';
  return 'In service';
}

function renderNodes() {
  const now = Date.now();
  $('nodes-table').replaceChildren(table('Media servers', ['Name', 'State', 'People', 'Calls', 'Last heard', ''],
    app.nodes.map((n) => {
      const live = n.expires_at > now;
      const action = !live
        ? ''
        : n.draining
          ? h('button', { type: 'button', onclick: () => nodeAction(n.id, 'resume') }, `Put ${n.id} back in service`)
          : h('button', { type: 'button', onclick: () => nodeAction(n.id, 'drain') }, `Drain ${n.id}`);
      return [n.id, nodeState(n, now), String(n.participants), String(n.consultations),
        h('time', { datetime: new Date(n.heartbeat_at).toISOString() }, clock(n.heartbeat_at)), action];
    }),
    'No separate media servers: this server carries its calls itself.'));
}

async function nodeAction(id, what) {
  $('nodes-error').textContent = '';
  try {
    const body = what === 'drain' ? { deadline_seconds: Number($('drain-after').value) } : undefined;
    await call(`/api/admin/media-nodes/${encodeURIComponent(id)}/${what}`, { method: 'POST', body });
  } catch (e) {
    $('nodes-error').textContent = `Could not ${what} ${id}: ${e.message}`;
  }
  // The node writes its new state into its record a moment later.
  const wanted = what === 'drain';
  for (let i = 0; i < 10; i++) {
    await reload(['nodes']);
    if (app.nodes.find((n) => n.id === id)?.draining === wanted) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  await reload(['audit']);
}

$('nodes-refresh').addEventListener('click', () => reload(['nodes']));

const ACTIONS = {
  sign_in: 'signed in', sign_in_failed: 'failed sign-in', put_clinic: 'saved a clinic', put_staff: 'saved staff',
  issue_invite: 'issued an invite link', enter: 'patient arrived', admit: 'admitted', admit_next: 'admitted the next patient',
  return_to_waiting: 'sent back to waiting', transfer: 'transferred', remove: 'removed', leave: 'patient left',
  end_consultation: 'ended a call', send_message: 'sent a message', message: 'sent a message',
  node_drain: 'drained a media server', node_resume: 'put a media server back in service',
};

function renderAudit() {
  $('audit-table').replaceChildren(table('Audit log, newest first', ['When', 'Who', 'What', 'Clinic', 'Visit', 'Detail'],
    [...app.audit].sort((a, b) => b.at - a.at).map((e) => [
      h('time', { datetime: new Date(e.at).toISOString() }, clock(e.at)),
      e.actor,
      ACTIONS[e.action] || e.action.replaceAll('_', ' '),
      e.clinic || '',
      e.visit ? h('abbr', { title: e.visit }, e.visit.slice(0, 8)) : '',
      e.detail || '',
    ]),
    'Nothing recorded yet.'));
}

// --- forms -------------------------------------------------------------------------------------

/** Runs a form's submission with its own error paragraph; a thrown error is shown there. */
function wireForm(form, run) {
  const error = form.querySelector('[role=alert]');
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const button = form.querySelector('button[type=submit]');
    for (const f of form.querySelectorAll('[aria-invalid]')) f.removeAttribute('aria-invalid');
    showError(error, '');
    $('feedback').textContent = '';
    $('failure').textContent = '';
    button.disabled = true;
    try {
      $('feedback').textContent = await run(form.elements);
    } catch (err) {
      showError(error, err.message);
      if (err.field) {
        err.field.setAttribute('aria-invalid', 'true');
        err.field.focus();
      }
    } finally {
      button.disabled = false;
    }
  });
}

function problem(field, text) {
  const e = new Error(text);
  e.field = field;
  return e;
}

wireForm($('clinic-form'), async (f) => {
  const id = f.id.value.trim();
  const name = f.name.value.trim();
  if (!SLUG.test(id)) throw problem(f.id, 'Enter a clinic code of small letters, digits, “-”, “_” or “.”, starting with a letter or digit.');
  if (!name) throw problem(f.name, 'Enter the clinic’s name.');
  if (app.clinics.some((c) => c.id === id) && !f.replace.checked) {
    throw problem(f.replace, `There is already a clinic “${id}”. Tick “replace” to change it, or choose another code.`);
  }
  await call('/api/admin/clinics', { method: 'POST', body: { id, name, open_link: f.open_link.checked } });
  f.id.value = '';
  f.name.value = '';
  f.replace.checked = false;
  await reload(['clinics', 'audit']);
  return `Clinic “${name}” saved.`;
});

wireForm($('staff-form'), async (f) => {
  const username = f.username.value.trim();
  const display_name = f.display_name.value.trim();
  const password = f.password.value;
  const clinics = [...$('staff-clinics').querySelectorAll('input:checked')].map((i) => i.value);
  if (!SLUG.test(username)) throw problem(f.username, 'Enter a user name of small letters, digits, “-”, “_” or “.”, starting with a letter or digit.');
  if (!display_name) throw problem(f.display_name, 'Enter their full name.');
  if ([...password].length < 10) throw problem(f.password, 'The password needs at least 10 characters.');
  if (f.role.value !== 'admin' && !clinics.length) {
    throw problem($('staff-clinics').querySelector('input') || f.role, 'Choose at least one clinic they work in.');
  }
  if (app.staff.some((s) => s.username === username) && !f.replace.checked) {
    throw problem(f.replace, `There is already a member of staff “${username}”. Tick “replace” to change their account, or choose another user name.`);
  }
  await call('/api/admin/staff', { method: 'POST', body: { username, display_name, role: f.role.value, clinics, password } });
  for (const el of [f.username, f.display_name, f.password]) el.value = '';
  f.replace.checked = false;
  await reload(['staff', 'audit']);
  return `${display_name} can now sign in as “${username}”.`;
});

$('gen-password').addEventListener('click', () => {
  const words = crypto.getRandomValues(new Uint32Array(4));
  const alphabet = 'abcdefghjkmnpqrstuvwxyz23456789';
  const part = (n) => Array.from({ length: 5 }, (_, i) => alphabet[(n >>> (i * 5)) % alphabet.length]).join('');
  $('staff-password').value = [...words].map(part).join('-');
  $('staff-password').focus();
});

wireForm($('invite-form'), async (f) => {
  if (!f.clinic.value) throw problem(f.clinic, 'Add a clinic first.');
  const appointment = f.appointment.value.trim() || undefined;
  const res = await call('/api/admin/invites', {
    method: 'POST',
    body: { clinic: f.clinic.value, appointment, valid_for_secs: Number(f.valid.value) * 3600 },
  });
  const list = issued();
  list.unshift({ clinic: f.clinic.value, appointment: appointment ?? null, url: res.url, expires_at: res.expires_at });
  try {
    sessionStorage.setItem(ISSUED_KEY, JSON.stringify(list.slice(0, 50)));
  } catch {
    // not kept past a reload
  }
  f.appointment.value = '';
  renderIssued();
  reload(['audit']);
  const input = $('issued').querySelector('input');
  input?.focus();
  input?.select();
  return 'Invite link created: it is first in the list of links issued here. Copy it and send it to the patient.';
});

function issued() {
  try {
    return (JSON.parse(sessionStorage.getItem(ISSUED_KEY)) || []).filter((i) => i.expires_at > Date.now());
  } catch {
    return [];
  }
}

function renderIssued() {
  const list = issued();
  const names = new Map(app.clinics.map((c) => [c.id, c.name]));
  $('issued').replaceChildren(...(list.length
    ? list.map((i, n) => {
      const id = `issued-${n}`;
      const input = h('input', { id, readonly: true, value: i.url });
      const status = h('span', { role: 'status', class: 'hint' });
      return h('li', { class: 'person' },
        h('div', { class: 'field grow' },
          h('label', { for: id }, `${names.get(i.clinic) || i.clinic}${i.appointment ? `, ${i.appointment}` : ''}: works until ${clock(i.expires_at)}`),
          h('div', { class: 'link-box' }, input,
            h('button', { type: 'button', onclick: async () => {
              status.textContent = (await copyText(i.url, input)) ? 'Copied.' : 'Select the link and copy it.';
            } }, 'Copy', h('span', { class: 'visually-hidden' }, ` link ${n + 1}`))),
          status));
    })
    : [h('li', { class: 'muted' }, 'None yet.')]));
}

$('audit-refresh').addEventListener('click', async () => {
  await reload(['audit']);
  $('feedback').textContent = `Audit log refreshed: ${app.audit.length} entries.`;
});
$('audit-limit').addEventListener('change', () => reload(['audit']));

// --- start -------------------------------------------------------------------------------------

{
  const stored = loadSession();
  if (!stored) showSignIn(takeNote());
  else if (stored.expires_at <= Date.now()) {
    clearSession();
    showSignIn(EXPIRED);
  } else resume(stored);
}
