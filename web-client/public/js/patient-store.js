// Where the patient page keeps a visit (never in a URL, never logged), and what its
// address says.
//
// - The visit credential lives in sessionStorage (this tab: a reload goes straight back)
//   and in localStorage under the link it came from: a reopened personal invite resumes
//   by itself; a reopened clinic link (the device may be shared) asks for the name
//   given, checked against a hash kept with it (never the name itself).

import { app } from './patient-app.js';

const SESSION_KEY = 'consult.patient.visit'; // sessionStorage: {entry, token, visit, expires_at}
const LOCAL_KEY = 'consult.patient.visits'; // localStorage: {entryKey: {token, expires_at, since, check}}
/** sessionStorage: {entry, token} of an ended invite visit (its holder may join again). */
export const PREVIOUS_KEY = 'consult.patient.previous';

/** A short stable key for an invite, so that the invite itself is not a storage key. */
export function hashKey(s) {
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

export function readJson(kind, key) {
  try {
    return JSON.parse(store(kind)?.getItem(key) ?? 'null');
  } catch {
    return null;
  }
}

export function writeJson(kind, key, value) {
  try {
    if (value == null) store(kind)?.removeItem(key);
    else store(kind)?.setItem(key, JSON.stringify(value));
  } catch {
    // full or refused: the visit still works until the page is closed
  }
}

export function localVisits() {
  const all = readJson('local', LOCAL_KEY) || {};
  const now = Date.now();
  for (const [k, v] of Object.entries(all)) if (!v || v.expires_at <= now) delete all[k];
  return all;
}

/**
 * A check value of the name a patient gave (never the name itself): reopening a clinic's
 * shared link on the same device returns to the visit only for the same name.
 */
export async function nameCheck(name) {
  const text = `${app.entryKey}|${name.trim().replace(/\s+/g, ' ').toLowerCase()}`;
  try {
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
    return [...new Uint8Array(digest).slice(0, 12)].map((b) => b.toString(16).padStart(2, '0')).join('');
  } catch {
    return `f${hashKey(text)}`; // no WebCrypto (not a secure context)
  }
}

export function saveVisit(token, visit, expiresAt, check) {
  writeJson('session', SESSION_KEY, { entry: app.entryKey, token, visit, expires_at: expiresAt });
  const all = localVisits();
  all[app.entryKey] = { token, expires_at: expiresAt, since: Date.now(), check };
  writeJson('local', LOCAL_KEY, all);
}

export function forgetVisit() {
  writeJson('session', SESSION_KEY, null);
  const all = localVisits();
  delete all[app.entryKey];
  writeJson('local', LOCAL_KEY, Object.keys(all).length ? all : null);
}


/** What the address says: a clinic's open link or a personal invite. */
export function parseLink() {
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
export function readInvite(token) {
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

/** This tab's visit, if any: {entry, token, visit, expires_at}. */
export function tabVisit() {
  return readJson('session', SESSION_KEY);
}

/** Keeps a visit for this tab (a reload returns to it). */
export function keepInTab(visit) {
  writeJson('session', SESSION_KEY, visit);
}
