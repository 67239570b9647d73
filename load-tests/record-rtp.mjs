// Opens the page of a running `rtp-record` in Debian's Chromium or Firefox ESR, launched
// as the browser tests launch them (web-client/tests/harness.mjs: fake devices, loopback
// ICE), and waits until the page has reported its recording. Used by
// load-tests/record-rtp.
//   node load-tests/record-rtp.mjs chromium|firefox URL

import { launchBrowser } from '../web-client/tests/harness.mjs';

const [engine, url] = process.argv.slice(2);
setTimeout(() => {
  console.error('record-rtp: no report within 60 s');
  process.exit(1);
}, 60_000).unref();

const browser = await launchBrowser(engine);
const page = await (await browser.newContext()).newPage();
await page.goto(url);
await page.waitForFunction(() => window.recorded, null, { timeout: 55_000 });
const result = await page.evaluate(() => window.recorded);
await browser.close();
console.log(`record-rtp: ${engine}: ${result}`);
process.exit(result === 'done' ? 0 : 1);
