// The patient's pre-call check screen: "Turn on camera and microphone" (the press that
// lets the browser ask for them: iOS Safari and others ask only after one), then the
// camera preview, the microphone meter, a choice of device where there are several, the
// connection test, and every problem in one alert with what to do about it.

import { $, app, announce, show } from './patient-app.js';
import { listDevices } from './devices.js';
import { checkConnection, resumeAudio, watchLevel } from './patient-check.js';
import { CAMERA_SHORT, MIC_SHORT, NET_SHORT, VIA_TEXT, deviceFixes, networkFix } from './patient-words.js';

const check = {
  stopLevel: () => {},
  abort: null,
  quietTimer: null,
  runs: 0,
};

function setResult(id, state, text) {
  const el = $(id);
  el.dataset.state = state;
  el.textContent = text;
}

/** The check screen. Its devices start only when the person presses the button. */
export function showCheck() {
  show('check');
  if (!app.devices.started) {
    app.check = { camera: 'off', microphone: 'off', heard: false, network: 'pending', via: null, rttMs: null, webServer: null };
    $('check-start-box').hidden = false;
    setResult('camera-result', 'off', CAMERA_SHORT.off);
    setResult('mic-result', 'off', MIC_SHORT.off);
    setResult('net-result', 'pending', NET_SHORT.pending);
    $('preview-off').hidden = false;
    return;
  }
  runCheck();
}

/** Runs the check: opens the devices if they are not working (a press asked), then tests. */
export async function runCheck() {
  show('check');
  $('check-start-box').hidden = true;
  const run = ++check.runs;
  check.abort?.abort();
  check.stopLevel();
  clearTimeout(check.quietTimer);
  app.check = { camera: 'pending', microphone: 'pending', heard: false, network: 'pending', via: null, rttMs: null, webServer: null };
  setResult('camera-result', 'pending', 'Starting your camera…');
  setResult('mic-result', 'pending', 'Starting your microphone…');
  setResult('net-result', 'pending', NET_SHORT.pending);
  $('net-detail').hidden = true;
  $('check-problems').hidden = true;
  $('check-continue-note').hidden = true;
  $('mic-level').value = 0;

  const d = app.devices;
  resumeAudio(); // within the press: the meter's audio may start now
  if (!d.started || d.camera !== 'ok' || d.microphone !== 'ok' || !d.micTrack) {
    await d.start();
    if (run !== check.runs) return;
  }
  showDevices();
  await fillDeviceChoices();
  if (run !== check.runs) return;
  runNetworkCheck();
}

/** Draws the camera preview (what the devices hold now). */
export function renderPreview() {
  const cam = app.devices.cameraTrack;
  const preview = $('preview');
  const want = cam && cam.readyState === 'live' ? cam : null;
  if ((preview.srcObject?.getVideoTracks()[0] ?? null) !== want) preview.srcObject = want ? new MediaStream([want]) : null;
  $('preview-off').hidden = !!want;
  preview.classList.toggle('mirrored', app.devices.facing !== 'environment');
}

/** The devices' states under the preview and the meter (after a start or a change). */
export function showDevices() {
  const { camera, microphone } = app.devices;
  app.check.camera = camera;
  app.check.microphone = microphone;
  renderPreview();
  setResult('camera-result', camera === 'ok' ? 'ok' : camera === 'off' ? 'off' : 'bad', CAMERA_SHORT[camera]);
  check.stopLevel();
  clearTimeout(check.quietTimer);
  if (microphone === 'ok') {
    setResult('mic-result', 'pending', MIC_SHORT.ok);
    let loud = 0;
    check.stopLevel = watchLevel(app.devices.stream, (level, ctxState) => {
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
    setResult('mic-result', microphone === 'off' ? 'off' : 'bad', MIC_SHORT[microphone]);
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
    const track = kind === 'video' ? app.devices.cameraTrack : app.devices.micTrack;
    const current = track?.getSettings().deviceId;
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

export async function onDeviceChosen(kind, deviceId) {
  await app.devices.use(kind, deviceId);
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
    result = await checkConnection(app.devices.stream, { signal: ctrl.signal });
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
  const netFix = networkFix(c.network, c.webServer);
  if (netFix) problems.push(`${netFix} Then press Check again.`);
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

/** Leaving the screen: the meter and the connection test stop (the devices stay on). */
export function leaveCheck() {
  check.runs++;
  check.abort?.abort();
  check.abort = null;
  check.stopLevel();
  check.stopLevel = () => {};
  clearTimeout(check.quietTimer);
  $('preview').srcObject = null;
}

/** Stops the meter (the devices are being given back). */
export function stopMeter() {
  check.stopLevel();
  check.stopLevel = () => {};
}
