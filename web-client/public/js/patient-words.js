// The patient page's words: every problem with what to do next, each device's and the
// network's state in a few words, and the end of a visit. Plain English, short sentences.

/** Problems that stop the journey, each with what to do next. */
export const ERRORS = {
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
export const CAMERA_SHORT = {
  off: 'Not started yet.',
  ok: 'Your camera works.',
  blocked: 'Blocked by your browser.',
  missing: 'No camera found.',
  busy: 'In use by another app.',
  error: 'Your camera could not be started.',
  unsupported: 'Not available in this browser.',
};
export const MIC_SHORT = {
  off: 'Not started yet.',
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
export const CAMERA_FIX = {
  blocked: 'Your browser is blocking the camera. To allow it, select the camera or padlock symbol next to the web address and choose Allow.',
  missing: 'We could not find a camera. If you have one, check it is plugged in and switched on. You can still join with sound only.',
  busy: 'Your camera is being used by another app, such as another video call. Close that app.',
  error: 'Your camera could not be started. If trying again does not help, restart your browser.',
  unsupported: 'This browser cannot use your camera here. Please use an up-to-date Chrome, Edge, Firefox or Safari.',
};
export const MIC_FIX = {
  blocked: 'Your browser is blocking the microphone. To allow it, select the microphone or padlock symbol next to the web address and choose Allow.',
  missing: 'We could not find a microphone. Plug in a headset, or use a phone, tablet or laptop with a microphone: without one the clinician cannot hear you.',
  busy: 'Your microphone is being used by another app, such as another call. Close that app.',
  error: 'Your microphone could not be started. If trying again does not help, restart your browser.',
  unsupported: 'This browser cannot use your microphone here. Please use an up-to-date Chrome, Edge, Firefox or Safari.',
};
export const BOTH_BLOCKED = 'Your browser is blocking the camera and microphone. To allow them, select the camera or padlock symbol next to the web address and choose Allow.';
export const NET_SHORT = {
  pending: 'Waiting to test your connection…',
  running: 'Testing your connection to the video service…',
  ok: 'Your connection works: video and sound can reach the clinic.',
  partial: 'You are connected, but we could not confirm that video reaches the clinic. The call may still work.',
  failed: 'Blocked: video cannot get through your network.',
  unreachable: 'Could not reach the video service.',
  unavailable: 'The video service is not available at the moment.',
  rate_limited: 'Too many checks from your network.',
};
const TRY_ANOTHER = 'Try another network: switch between Wi-Fi and mobile data, or turn off a VPN.';
export const NET_FIX = {
  failed: `Your network seems to block video calls. ${TRY_ANOTHER} On a work or hospital network, ask the IT team to allow video calls.`,
  unreachable: 'We could not reach the video service to test your connection. Check that you are connected to the internet.',
  unavailable: 'The video service is not available at the moment. Wait a few minutes.',
  rate_limited: 'Too many checks have come from your network. Wait a minute.',
};

/**
 * What to do about the network's state, or null: for a network that blocks everything,
 * the way in to name to an IT team when the check knows it (`webServer`, e.g.
 * 'turn.example.org port 443').
 */
export function networkFix(network, webServer) {
  if (network === 'failed' && webServer) {
    return `Your network blocks video calls, even the way that looks like secure web traffic. ${TRY_ANOTHER} On a work or hospital network, ask the IT team to allow connections to ${webServer} (secure web traffic over TCP).`;
  }
  return NET_FIX[network] ?? null;
}

/** The problems with camera and microphone, each with how to fix it, ending with `last`. */
export function deviceFixes(camera, microphone, last) {
  const out = [];
  if (camera === 'blocked' && microphone === 'blocked') out.push(BOTH_BLOCKED);
  else {
    if (CAMERA_FIX[camera]) out.push(CAMERA_FIX[camera]);
    if (MIC_FIX[microphone]) out.push(MIC_FIX[microphone]);
  }
  return out.map((t) => (t.startsWith('This browser') ? t : `${t} ${last}`));
}
/** How media flows (media-path.js), as the check says it. */
export const VIA_TEXT = {
  udp: 'Connected directly (UDP): the best kind of connection.',
  tcp: 'Connected directly over TCP, because your network blocks the faster way (UDP). This works, but the picture may be less smooth.',
  turn_udp: 'Connected through our relay server (UDP). This works well.',
  turn_tcp: 'Connected through our relay server over TCP, because your network blocks the faster way (UDP). This works, but the picture may be less smooth.',
  turn_tls: 'Connected through our relay server as secure web traffic (TLS), because your network lets nothing else through. This works, but the picture may be less smooth and sound a little delayed.',
};
export const ENDED = {
  consultation_ended: ['Your appointment has ended', 'Thank you. The clinician has ended the call. You can close this page.'],
  left: ['You have left', 'You left the appointment. The clinic can see that you have gone.'],
  removed: ['The clinic has closed your visit', 'You are no longer in the waiting room. If you think this is a mistake, contact the clinic, or join again.'],
  transferred: ['Your visit has moved', 'The clinic has moved your visit. Join again using the link the clinic gives you.'],
  lost: ['Your place in the waiting room has ended', 'We could not find your visit any more. This can happen if the service was restarted or your visit ran out of time. Please join the waiting room again.'],
};

/** What the call screen says about the patient's own camera and microphone. */
export const SELF = {
  muted: 'You are muted: the clinic cannot hear you.',
  cameraOff: 'Your camera is off: the clinic cannot see you.',
  notStarted: 'Your camera and microphone are not on, so the clinic cannot see or hear you.',
  noCamera: 'Your camera is not working: the clinic cannot see you.',
  noMic: 'Your microphone is not working: the clinic cannot hear you.',
};

/** A camera or microphone that went away mid-call (unplugged), or came. */
export const DEVICE_EVENTS = {
  'video-replaced': 'Your camera was disconnected. We are using your other camera.',
  'video-missing': 'Your camera was disconnected, and there is no other. The clinic cannot see you; they can still hear you.',
  'audio-replaced': 'Your microphone was disconnected. We are using your other microphone.',
  'audio-missing': 'Your microphone was disconnected, and there is no other. The clinic cannot hear you. Plug in a headset, or use a phone.',
  'audio-default': 'Now using the microphone you plugged in.',
  'audio-found': 'Your microphone is on again.',
  'video-found': 'Your camera is on again.',
};

/** How the other people's state is said on the patient's page. */
export const PEER_WORDS = {
  screen: 'The clinician is sharing their screen',
};
