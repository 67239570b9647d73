// What the staff pages (staff.html, admin.html) share: the signed-in session kept in
// sessionStorage (one browser tab; closing it signs out), the REST client with errors in
// plain English, sign-in, refreshing the token before it expires, and small DOM helpers.
//
// REST: POST /api/staff/sign-in, POST /api/staff/refresh (signalling/protocol/src/lib.rs;
// examples in signalling/protocol/fixtures/rest_*.json).

const KEY = 'consult.staff';
const NOTE_KEY = 'consult.staff.note';

export const $ = (id) => document.getElementById(id);

/** Builds an element: h('button', {type: 'button', class: 'x', onclick}, 'text', child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  el.append(...children.flat().filter((c) => c != null && c !== false));
  return el;
}

/**
 * Empties the live regions inside `root` (a view being hidden): screen readers would
 * still reach their text, or say it again when the view comes back. Error boxes, shown
 * only when they have something to say, are hidden again.
 */
export function clearLiveRegions(root) {
  for (const el of root.querySelectorAll('[role="alert"], [role="status"], [aria-live]')) {
    if (!el.textContent) continue;
    el.replaceChildren();
    if (el.classList.contains('error')) el.hidden = true;
  }
}

/** A visually hidden span: extra words for screen readers ("Message" + " Pat Example"). */
export const sr = (text) => h('span', { class: 'visually-hidden' }, text);

// --- the session ---------------------------------------------------------------------------

/** {token, expires_at, session: {username, display_name, role, clinics}} or null. */
export function loadSession() {
  try {
    const s = JSON.parse(sessionStorage.getItem(KEY));
    return s && typeof s.token === 'string' && s.session ? s : null;
  } catch {
    return null;
  }
}

export function saveSession(s) {
  try {
    sessionStorage.setItem(KEY, JSON.stringify(s));
  } catch {
    // storage refused (private mode): this page works until it is reloaded
  }
}

export function clearSession() {
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    // nothing stored
  }
}

/** A message for the sign-in form of the next page shown (e.g. after a redirect). */
export function leaveNote(text) {
  try {
    sessionStorage.setItem(NOTE_KEY, text);
  } catch {
    // not kept
  }
}

export function takeNote() {
  try {
    const t = sessionStorage.getItem(NOTE_KEY);
    sessionStorage.removeItem(NOTE_KEY);
    return t;
  } catch {
    return null;
  }
}

export const ROLE_NAMES = { admin: 'Administrator', reception: 'Reception', clinician: 'Clinician' };

export const EXPIRED = 'Your sign-in has expired. Please sign in again.';
export const INVALID = 'Your sign-in is no longer valid. Please sign in again.';
export const ENDED = 'You were signed out: you signed out elsewhere, your password, role or clinics changed, or an administrator ended your sign-in. Please sign in again.';

/** Tells the server this sign-in is over, so its token stops working everywhere. */
export function endSignIn(token) {
  if (!token) return;
  fetch('/api/staff/sign-out', { method: 'POST', headers: { authorization: `Bearer ${token}` }, keepalive: true }).catch(() => {});
}

// --- REST -------------------------------------------------------------------------------------

/** A refused or failed request: `code` is the server's error code (or `network`). */
export class ApiError extends Error {
  constructor(code, message, status = 0) {
    super(message);
    this.code = code;
    this.status = status;
  }

  /** The sign-in is over: expired, or not valid any more. */
  get authLost() {
    return this.code === 'token_expired' || this.code === 'unauthenticated' || this.code === 'session_ended';
  }
}

/** Plain English for an error code; the server's own message where it says it best. */
export function explain(code, message) {
  switch (code) {
    case 'network':
      return 'Cannot reach the server. Check your network connection, then try again.';
    case 'wrong_credentials':
      return 'The user name or password is not right. Check them and try again.';
    case 'token_expired':
      return EXPIRED;
    case 'unauthenticated':
      return INVALID;
    case 'session_ended':
      return ENDED;
    case 'forbidden':
      return 'You are not allowed to do this. Ask an administrator if you need to.';
    case 'rate_limited':
      return 'Too many attempts in a short time. Wait a minute, then try again.';
    case 'unavailable':
      return 'The server is not answering just now, so nothing was changed. Try again in a moment.';
    case 'conflict':
      return 'Someone else changed this at the same moment. Look at the board again, then retry.';
    case 'internal':
      return 'Something went wrong on the server, so nothing was changed. Try again; if it keeps happening, tell IT support.';
    default:
      return sentence(message) || 'That did not work. Try again.';
  }
}

/** "this patient has already been admitted" -> "This patient has already been admitted." */
export function sentence(text) {
  if (!text) return '';
  const t = text.trim();
  return t[0].toUpperCase() + t.slice(1) + (/[.!?…]$/.test(t) ? '' : '.');
}

/** A JSON request; resolves with the answer (null for 204), rejects with an ApiError. */
export async function api(path, { method = 'GET', body, token } = {}) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError('network', explain('network'));
  }
  const text = await res.text().catch(() => '');
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: a proxy's error page
  }
  if (!res.ok) {
    const code = data?.code || (res.status >= 500 ? 'unavailable' : 'http');
    throw new ApiError(code, explain(code, data?.message), res.status);
  }
  return data;
}

/**
 * Sign-in through the organisation's identity provider: its name when the server offers
 * it (GET /api/staff/sign-in-options), else null.
 */
export async function oidcProvider() {
  try {
    return (await api('/api/staff/sign-in-options')).oidc || null;
  } catch {
    return null;
  }
}

/**
 * After signing in at the identity provider the server sends the browser to
 * `#oidc`, its token in a short-lived HttpOnly cookie: swapped here for the sign-in
 * (POST /api/staff/oidc/session), never through a URL. Resolves with the sign-in, or
 * null when this page was not such a landing.
 */
export async function takeOidcSignIn() {
  if (location.hash !== '#oidc') return null;
  history.replaceState(null, '', location.pathname + location.search);
  const s = await api('/api/staff/oidc/session', { method: 'POST' });
  saveSession(s);
  return s;
}

export async function signIn(username, password) {
  const s = await api('/api/staff/sign-in', { method: 'POST', body: { username, password } });
  saveSession(s);
  return s;
}

/**
 * Keeps the token fresh: asks for a new one five minutes before it expires (or halfway,
 * for short ones), calls `onFresh(session)` with it, and `onLost(message)` when that is
 * no longer possible (expired, or the account changed). Returns a function that stops it.
 */
export function keepFresh(initial, { onFresh, onLost }) {
  let current = initial;
  let timer = null;
  const schedule = () => {
    const left = current.expires_at - Date.now();
    if (left <= 0) {
      onLost(EXPIRED);
      return;
    }
    const wait = Math.max(2_000, Math.min(left - 5 * 60_000, left / 2));
    timer = setTimeout(refresh, wait);
  };
  const refresh = async () => {
    try {
      const s = await api('/api/staff/refresh', { method: 'POST', token: current.token });
      current = s;
      saveSession(s);
      onFresh(s);
      schedule();
    } catch (e) {
      if (e.authLost || e.code === 'forbidden' || e.code === 'not_found') {
        onLost(e.code === 'token_expired' ? EXPIRED : e.code === 'session_ended' ? ENDED : INVALID);
      } else if (current.expires_at - Date.now() > 10_000) {
        timer = setTimeout(refresh, 15_000); // the server is unreachable: try again
      } else {
        onLost(EXPIRED);
      }
    }
  };
  schedule();
  return () => clearTimeout(timer);
}

/**
 * Wires a sign-in form (fields #username and #password, an error paragraph): submits,
 * shows plain-English errors, and calls `onSignedIn(session)`.
 */
export function wireSignIn(form, errorEl, onSignedIn) {
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const user = form.elements.username;
    const pass = form.elements.password;
    const button = form.querySelector('button[type=submit]');
    const missing = !user.value.trim() ? user : !pass.value ? pass : null;
    for (const f of [user, pass]) f.removeAttribute('aria-invalid');
    if (missing) {
      missing.setAttribute('aria-invalid', 'true');
      showError(errorEl, missing === user ? 'Enter your user name.' : 'Enter your password.');
      missing.focus();
      return;
    }
    button.disabled = true;
    showError(errorEl, '');
    try {
      const s = await signIn(user.value.trim(), pass.value);
      pass.value = '';
      onSignedIn(s);
    } catch (err) {
      showError(errorEl, err.message);
      if (err.code === 'wrong_credentials') {
        pass.value = '';
        pass.setAttribute('aria-invalid', 'true');
        pass.focus();
      }
    } finally {
      button.disabled = false;
    }
  });
}

export function showError(el, text) {
  el.textContent = text;
  el.hidden = !text;
}

// --- time ------------------------------------------------------------------------------------

/** "less than a minute", "4 min", "1 h 05 min" */
export function duration(ms) {
  const min = Math.floor(Math.max(0, ms) / 60_000);
  if (min < 1) return 'less than a minute';
  if (min < 60) return `${min} min`;
  return `${Math.floor(min / 60)} h ${String(min % 60).padStart(2, '0')} min`;
}

/** "14:05" (or "3 Mar, 14:05" if not today). */
export function clock(ts) {
  const d = new Date(ts);
  const today = new Date().toDateString() === d.toDateString();
  const opts = today ? { hour: '2-digit', minute: '2-digit' } : { day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit' };
  return d.toLocaleString(undefined, opts);
}

/** Copies text; resolves with whether it worked (falls back to selecting `input`). */
export async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    input?.select();
    try {
      return document.execCommand('copy');
    } catch {
      return false;
    }
  }
}
