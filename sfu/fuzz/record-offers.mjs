// Records the publisher offers and trickled candidates of Debian's Chromium and Firefox
// ESR into the corpora of the `sdp` and `sdp_offer` fuzz targets, as seeds: real text, as
// a browser sends it. Run by hand after a browser upgrade, inside a loopback-only network
// namespace, with web-client's packages installed (scripts/browser-tests installs them):
//
//   unshare --net bash -c 'ip link set lo up; node sfu/fuzz/record-offers.mjs'
//
// Each seed of `sdp_offer` is `OFFER \n--\n CANDIDATES \n--\n RENEWED OFFER` (see that
// target); `sdp` gets the offer alone.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchBrowser } from '../../web-client/tests/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
setTimeout(() => { console.error('record-offers: watchdog fired'); process.exit(1); }, 60_000).unref();

/** A publisher offer as the pages make one: audio and video sent, H264 first if asked. */
async function offer(page, h264First) {
  return page.evaluate(async (h264First) => {
    const pc = new RTCPeerConnection();
    const candidates = [];
    pc.onicecandidate = (e) => { if (e.candidate) candidates.push(e.candidate.candidate); };
    pc.addTransceiver('audio', { direction: 'sendonly' });
    const video = pc.addTransceiver('video', { direction: 'sendonly' });
    if (h264First && video.setCodecPreferences) {
      const codecs = RTCRtpReceiver.getCapabilities('video').codecs;
      const rank = (c) => (c.mimeType === 'video/H264' ? 0 : 1);
      video.setCodecPreferences([...codecs].sort((a, b) => rank(a) - rank(b)));
    }
    const first = await pc.createOffer();
    await pc.setLocalDescription(first);
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && resolve();
      setTimeout(resolve, 5000);
    });
    const sdp = pc.localDescription.sdp;
    pc.close();
    return { sdp, candidates };
  }, h264First);
}

function write(target, name, text) {
  const dir = path.join(here, 'corpus', target);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, name), text);
  console.log(`${target}/${name}: ${text.length} bytes`);
}

for (const engine of ['chromium', 'firefox']) {
  const browser = await launchBrowser(engine);
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    for (const h264First of engine === 'chromium' ? [false, true] : [false]) {
      const { sdp, candidates } = await offer(page, h264First);
      const name = `${engine}${h264First ? '-h264-first' : ''}`;
      write('sdp', `${name}-offer`, sdp);
      // Half the candidates before the offer (kept by the engine until it is applied).
      const lines = candidates.map((c, i) => (i % 2 ? c : `!${c}`));
      write('sdp_offer', name, `${sdp}\n--\n${lines.join('\n')}\n--\n${sdp}`);
    }
  } finally {
    await browser.close();
  }
}
