// The page's reconnection backoff (signalling.js `reconnectDelay`): quick after a drop,
// patient with a restarting server, never more than about 2 s while the server's store is
// away (1013), so that pages are back within seconds of Redis returning (issue 16).
// Pure: no browser. load-tests/src/bin/rush.rs follows the same rule.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { reconnectDelay } from '../public/js/signalling.js';
import { watchdog } from './harness.mjs';

watchdog(20);

const low = () => 0;
const high = () => 0.999_999;
/** The delays of `n` tries in a row after closes with `code`, at both ends of the jitter. */
const series = (code, n, random) => Array.from({ length: n }, (_, retry) => reconnectDelay(retry, code, random));

test('a dropped connection is tried again within 250 ms, then backs off to at most 10 s (with jitter)', () => {
  assert.ok(reconnectDelay(0, 1006, high) < 250);
  assert.equal(reconnectDelay(0, 1006, low), 0);
  assert.deepEqual(series(1006, 6, low).slice(1), [750, 1_500, 3_000, 6_000, 7_500]);
  assert.ok(series(1006, 12, high).every((d) => d < 12_500));
  assert.ok(reconnectDelay(8, 1006, high) > 12_000, 'the cap is 10 s with up to 25 % jitter');
});

test('a restarting server (1012) is given 0.5 s, with jitter, from the first try', () => {
  assert.equal(reconnectDelay(0, 1012, low), 375);
  assert.ok(reconnectDelay(0, 1012, high) < 625);
});

test('while the store is away (1013) no wait is over 2.5 s, however many tries', () => {
  const waits = series(1013, 20, high);
  assert.ok(waits.every((d) => d < 2_500), waits.join(', '));
  assert.ok(waits.slice(2).every((d) => d > 2_400), 'after two tries: about 2 s each');
  assert.ok(reconnectDelay(0, 1013, high) < 250, 'the first try comes at once, as after any drop');
});
