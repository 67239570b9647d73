// The support desk's view of how a clinic's calls went (GET /api/clinics/{id}/call-quality,
// kept 30 days): per call, one line per media session of each person in it, by role and
// never by name, with what their browser measured: how media flowed, the round trip,
// loss, what was received and sent, video freezes, concealed sound and time in sound
// only. Opened from the clinic's "Call quality…" button, in the board's one dialog.

import { api, h } from './staff-common.js';
import { PATH_LABEL } from './media-path.js';
import { ask } from './staff-dialog.js';

const ROLE = { patient: 'Patient', clinician: 'Clinician' };

const time = (ms) => new Date(ms).toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
const minutes = (s) => (s < 60 ? `${s} s` : `${Math.round(s / 60)} min`);
const pct = (permille) => `${(permille / 10).toFixed(1)} %`;

/** A call's figures, worst first in words: what a support desk looks at first. */
export function verdict(f) {
  if (f.seconds < 5) return 'Too short to judge';
  const freezesPerMin = (f.freezes * 60) / Math.max(1, f.seconds);
  if (f.concealed_permille >= 50 || f.loss_permille >= 80 || freezesPerMin >= 3) return 'Poor';
  if (f.concealed_permille >= 20 || f.loss_permille >= 20 || freezesPerMin >= 1 || f.audio_only_ms > 0) return 'Fair';
  return 'Good';
}

function sessionRow(s) {
  const f = s.figures;
  return h('tr', { 'data-role': s.role },
    h('th', { scope: 'row' }, ROLE[s.role] ?? s.role),
    h('td', {}, verdict(f)),
    h('td', {}, minutes(f.seconds)),
    h('td', {}, PATH_LABEL[f.path] ?? 'Not known'),
    h('td', {}, f.rtt_ms ? `${f.rtt_ms} ms` : '–'),
    h('td', {}, pct(f.loss_permille)),
    h('td', {}, `${f.recv_kbps} / ${f.send_kbps}`),
    h('td', {}, f.freezes ? `${f.freezes} (${(f.freeze_ms / 1000).toFixed(1)} s)` : 'None'),
    h('td', {}, pct(f.concealed_permille)),
    h('td', {}, f.audio_only_ms ? minutes(Math.round(f.audio_only_ms / 1000)) : 'No'),
  );
}

function callTable(call, n) {
  const id = `quality-call-${n}`;
  return h('table', { class: 'quality-table', 'aria-labelledby': id, 'data-consultation': call.consultation },
    h('caption', { id }, `Call started ${time(call.started_at)}, last report ${time(call.updated_at)}`),
    h('thead', {}, h('tr', {},
      ...['Who', 'Overall', 'Length', 'Video path', 'Round trip', 'Lost', 'kbit/s in / out', 'Freezes', 'Sound concealed', 'Sound only']
        .map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, call.sessions.map(sessionRow)),
  );
}

/** Opens the dialog with a clinic's call quality; reports a failure inside it. */
export async function showCallQuality(cl, token, fallback) {
  // The list scrolls on its own: focusable, so that a keyboard can scroll it too.
  const body = h('div', { class: 'quality-calls', tabindex: '0', role: 'region', 'aria-label': 'Calls and their quality' }, h('p', {}, 'Loading…'));
  const shown = ask({ title: `Call quality in ${cl.name}, last 30 days`, body: [body], okLabel: 'Close', submit: async () => {}, fallback });
  try {
    const calls = await api(`/api/clinics/${encodeURIComponent(cl.id)}/call-quality`, { token });
    body.replaceChildren(
      h('p', { class: 'muted' }, 'What each person’s browser measured, without names or any picture or sound. A person who rejoined has a line per connection.'),
      ...(calls.length ? calls.map(callTable) : [h('p', {}, 'No calls in the last 30 days.')]),
    );
  } catch (e) {
    body.replaceChildren(h('p', { role: 'alert' }, `The call quality could not be read: ${e.message}`));
  }
  return shown;
}
