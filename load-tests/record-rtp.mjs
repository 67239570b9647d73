// Opens the page of a running `rtp-record` in Debian's Chromium (playwright-core) or
// Firefox ESR (puppeteer-core over WebDriver BiDi), with fake devices, and waits until
// the page has reported its recording. Used by load-tests/record-rtp.
//   node load-tests/record-rtp.mjs chromium|firefox URL

import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const [browserName, url] = process.argv.slice(2);
const webClient = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../web-client/package.json');
const require = createRequire(webClient);
setTimeout(() => {
  console.error('record-rtp: no report within 60 s');
  process.exit(1);
}, 60_000).unref();

const recorded = () => window.recorded;
let browser;
let result;
if (browserName === 'chromium') {
  const { chromium } = require('playwright-core');
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
      '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
    ],
  });
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForFunction(recorded, null, { timeout: 55_000 });
  result = await page.evaluate(recorded);
} else if (browserName === 'firefox') {
  const puppeteer = require('puppeteer-core');
  browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: '/usr/bin/firefox-esr',
    headless: true,
    timeout: 30_000,
    // As web-client/tests/firefox.mjs: fake devices allowed without a prompt (Firefox
    // gathers loopback candidates only for a page allowed the camera), loopback ICE.
    extraPrefsFirefox: {
      'permissions.default.camera': 1,
      'permissions.default.microphone': 1,
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      'media.peerconnection.ice.loopback': true,
      'media.peerconnection.ice.obfuscate_host_addresses': false,
    },
  });
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForFunction(recorded, { timeout: 55_000 });
  result = await page.evaluate(recorded);
} else {
  throw new Error(`unknown browser ${browserName}`);
}
await browser.close();
console.log(`record-rtp: ${browserName}: ${result}`);
process.exit(result === 'done' ? 0 : 1);
