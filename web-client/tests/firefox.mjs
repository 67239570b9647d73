// Debian's firefox-esr for the browser tests, driven over WebDriver BiDi by puppeteer-core
// (never a downloaded build), behind the few calls of Playwright's page API that the
// helpers use (harness.mjs, patient-helpers.mjs, staff-helpers.mjs). A test opens "a page"
// the same way in either browser: h.launchBrowser('firefox' | 'chromium'), then
// browser.newContext(), context.newPage(), and on the page goto, evaluate,
// waitForFunction, getByRole / getByLabel / locator(css) with click, fill, selectOption and
// waitFor, setViewportSize, screenshot, on('console' | 'pageerror').
//
// Names match exactly (Playwright's `exact: true`), through the accessibility tree
// (BiDi's accessibility locator). Not available here: websocket frames and response
// bodies (puppeteer does not report them over BiDi), so tests that read those run in
// Chromium.

import puppeteer, { Puppeteer } from 'puppeteer-core';

export const FIREFOX = process.env.FIREFOX || '/usr/bin/firefox-esr';

/**
 * Preferences for a Firefox in the tests' namespace: fake camera and microphone with no
 * prompt, ICE candidates on loopback, and plain addresses (no mDNS names). Camera and
 * microphone are also allowed by default: without a granted permission Firefox gathers
 * only the default route's address ("use only default local addresses" in its ICE log;
 * capturing from the fake devices with prompts disabled does not count), and the
 * namespace has no route, so it gathered no candidate at all.
 */
export const FIREFOX_PREFS = {
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  'permissions.default.camera': 1,
  'permissions.default.microphone': 1,
  'media.peerconnection.ice.loopback': true,
  'media.peerconnection.ice.obfuscate_host_addresses': false,
};

/**
 * `::-p-label(text)`: form controls labelled `text`, as Playwright's getByLabel finds them
 * (by accessible name, the label element itself would match first).
 */
Puppeteer.registerCustomQueryHandler('label', {
  queryAll: (root, text) => {
    const plain = (s) => (s ?? '').replace(/\s+/g, ' ').trim();
    const byIds = (el) => (el.getAttribute('aria-labelledby') ?? '').split(/\s+/).filter(Boolean)
      .map((id) => el.ownerDocument.getElementById(id)?.textContent).join(' ');
    const label = (el) =>
      plain(byIds(el)) || plain(el.getAttribute('aria-label')) || plain([...(el.labels ?? [])].map((l) => l.textContent).join(' '));
    return [...root.querySelectorAll('input, select, textarea')].filter((el) => label(el) === text);
  },
});

const DEFAULT_VIEWPORT = { width: 1280, height: 720 };
const TIMEOUT_MS = 15_000;

/** Firefox, headless; resolves with a browser that looks like Playwright's to the helpers. */
export async function launchFirefox() {
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    headless: true,
    extraPrefsFirefox: FIREFOX_PREFS,
    defaultViewport: DEFAULT_VIEWPORT,
    timeout: 30_000,
    protocolTimeout: 30_000,
  });
  return new FirefoxBrowser(browser, await browser.version());
}

class FirefoxBrowser {
  engine = 'firefox';
  #browser;
  #version;

  constructor(browser, version) {
    this.#browser = browser;
    this.#version = version;
  }

  /** e.g. "firefox/153.8.0" */
  version() {
    return this.#version;
  }

  /** A new person: a user context of its own (cookies and storage apart). */
  async newContext({ viewport = DEFAULT_VIEWPORT } = {}) {
    return new FirefoxContext(await this.#browser.createBrowserContext(), viewport);
  }

  /** Closes the browser; kills it if it does not close within 10 s. */
  async close() {
    const proc = this.#browser.process();
    const closed = await Promise.race([
      this.#browser.close().then(() => true, () => false),
      new Promise((r) => setTimeout(() => r(false), 10_000)),
    ]);
    if (!closed) proc?.kill('SIGKILL');
  }
}

class FirefoxContext {
  #context;
  #viewport;
  #initScripts = [];

  constructor(context, viewport) {
    this.#context = context;
    this.#viewport = viewport;
  }

  /** `fn` runs in every page opened after this, before the page's own scripts. */
  async addInitScript(fn) {
    this.#initScripts.push(fn);
  }

  async newPage() {
    const page = await this.#context.newPage();
    page.setDefaultTimeout(TIMEOUT_MS);
    await page.setViewport(this.#viewport);
    for (const fn of this.#initScripts) await page.evaluateOnNewDocument(fn);
    return new FirefoxPage(page, this);
  }

  async close() {
    await this.#context.close();
  }
}

class FirefoxPage {
  engine = 'firefox';
  #page;
  #context;

  constructor(page, context) {
    this.#page = page;
    this.#context = context;
  }

  context() {
    return this.#context;
  }

  url() {
    return this.#page.url();
  }

  /** 'console' (message with type() and text()) and 'pageerror' (an Error). */
  on(event, fn) {
    if (event !== 'console' && event !== 'pageerror') {
      throw new Error(`firefox pages report no '${event}' events (puppeteer over BiDi)`);
    }
    this.#page.on(event, fn);
    return this;
  }

  async goto(url) {
    await this.#page.goto(url);
  }

  /** Runs `fn(arg)` in the page (a function, or a string of source) and returns its result. */
  evaluate(fn, arg) {
    return typeof fn === 'string' ? this.#page.evaluate(fn) : this.#page.evaluate(fn, arg);
  }

  async waitForFunction(fn, arg, { timeout = TIMEOUT_MS } = {}) {
    return this.#page.waitForFunction(fn, { timeout, polling: 100 }, arg);
  }

  async setViewportSize(size) {
    await this.#page.setViewport(size);
  }

  viewportSize() {
    return this.#page.viewport();
  }

  async screenshot({ path, fullPage = false } = {}) {
    return this.#page.screenshot({ path, fullPage });
  }

  getByRole(role, options) {
    return new FirefoxLocator(this.#page, '').getByRole(role, options);
  }

  getByLabel(text, options) {
    return new FirefoxLocator(this.#page, '').getByLabel(text, options);
  }

  locator(css) {
    return new FirefoxLocator(this.#page, css);
  }
}

/** A CSS selector, then (optionally) an element by role and accessible name inside it. */
class FirefoxLocator {
  #page;
  #selector;

  constructor(page, selector) {
    this.#page = page;
    this.#selector = selector;
  }

  /** An element of `role` whose accessible name is exactly `name`. */
  getByRole(role, { name } = {}) {
    const nameAttr = name === undefined ? '' : `[name=${quote(name)}]`;
    return new FirefoxLocator(this.#page, this.#inside(`::-p-aria(${nameAttr}[role=${quote(role)}])`));
  }

  /** The form control whose label (label element, aria-labelledby, aria-label) is exactly `text`. */
  getByLabel(text) {
    return new FirefoxLocator(this.#page, this.#inside(`::-p-label(${quote(text)})`));
  }

  locator(css) {
    return new FirefoxLocator(this.#page, this.#inside(css));
  }

  #inside(selector) {
    return this.#selector ? `${this.#selector} ${selector}` : selector;
  }

  /** Puppeteer's locator: waits until the (first) element is there, visible and enabled. */
  #locate() {
    return this.#page.locator(this.#selector).setTimeout(TIMEOUT_MS);
  }

  async click() {
    await this.#locate().click();
  }

  /** Types into an input or text area, or chooses a select's option by value. */
  async fill(value) {
    await this.#locate().fill(value);
  }

  async selectOption(value) {
    await this.#locate().fill(value);
  }

  async waitFor() {
    await this.#locate().wait();
  }

  async inputValue() {
    return this.#locate().map((el) => el.value).wait();
  }
}

/** A name or role as a quoted value in a `::-p-aria(...)` selector. */
function quote(value) {
  if (typeof value !== 'string') throw new Error(`firefox pages match names exactly, by string: ${value}`);
  if (value.includes('"')) throw new Error(`a name with a double quote cannot be matched: ${value}`);
  return `"${value}"`;
}
