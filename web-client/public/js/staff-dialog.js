// One modal dialog (the <dialog id="dlg"> of staff.html) for every question the board
// asks: message a patient, admit, transfer, confirm a removal, create an invite link.
// The browser's own modal dialog keeps focus inside it and closes on Escape; errors are
// shown inside it (role="alert") and it stays open so nothing typed is lost.

import { $, showError } from './staff-common.js';

const dlg = $('dlg');
const form = $('dlg-form');
const ok = $('dlg-ok');
const error = $('dlg-error');
let current = null; // {submit, resolve, opener, key, fallback}

/**
 * Opens the dialog. `submit(form)` runs on OK: a thrown error is shown and the dialog
 * stays open; it may call `update()` and return 'keep' to show a result instead of closing.
 * Resolves with true (done) or false (cancelled). `fallback()` gives the element to focus
 * if the button that opened the dialog is gone when it closes.
 */
export function ask({ title, body, okLabel, danger = false, submit, fallback }) {
  if (current) close(false);
  const opener = document.activeElement;
  return new Promise((resolve) => {
    current = { submit, resolve, opener, key: opener?.dataset?.key, fallback };
    $('dlg-h').textContent = title;
    update({ body, okLabel, danger });
    dlg.showModal();
    const first = dlg.querySelector('[autofocus]') || dlg.querySelector('input, select, textarea, button');
    first?.focus();
  });
}

/** Replaces the dialog's content (e.g. with the result of an action). */
export function update({ body, okLabel, danger = false, submit }) {
  if (body) $('dlg-body').replaceChildren(...body);
  if (okLabel) ok.textContent = okLabel;
  ok.className = danger ? 'danger' : 'primary';
  if (submit && current) current.submit = submit;
  showError(error, '');
}

/** Marks a field as wrong, focuses it, and stops the submission with `text`. */
export function invalid(field, text) {
  field.setAttribute('aria-invalid', 'true');
  field.focus();
  throw new Error(text);
}

export const isOpen = () => dlg.open;

function close(result) {
  if (!current) return;
  const { resolve, opener, key, fallback } = current;
  current = null;
  if (dlg.open) dlg.close();
  // The opener may have been redrawn while the dialog was open: find its successor.
  let target = opener?.isConnected ? opener : key ? document.querySelector(`[data-key="${CSS.escape(key)}"]`) : null;
  if (!target) target = fallback?.();
  target?.focus();
  resolve(result);
}

form.addEventListener('submit', async (e) => {
  e.preventDefault();
  if (!current || ok.disabled) return;
  for (const f of form.querySelectorAll('[aria-invalid]')) f.removeAttribute('aria-invalid');
  showError(error, '');
  ok.disabled = true;
  const mine = current;
  try {
    const r = await mine.submit?.(form);
    if (r !== 'keep' && current === mine) close(true);
  } catch (err) {
    if (current === mine) showError(error, err.message);
  } finally {
    ok.disabled = false;
  }
});
$('dlg-cancel').addEventListener('click', () => close(false));
dlg.addEventListener('cancel', (e) => {
  e.preventDefault();
  close(false);
});
