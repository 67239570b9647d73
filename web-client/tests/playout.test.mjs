// How long a page holds the video it receives, at least (playout.js): two round trips of
// its downlink while that downlink loses packets, so that a repair whose NACK or
// retransmission was lost can be asked again before the frame's turn; the browser's own
// delay on a clean link. Pure: no browser (the floor's effect in Chromium is measured by
// quality.test.mjs).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { applyFloor, CLEAR_MS, FLOOR_MAX_MS, floorFor, PlayoutFloor } from '../public/js/playout.js';
import { watchdog } from './harness.mjs';

watchdog(20);

test('a downlink that loses packets holds video for two of its round trips', () => {
  const f = new PlayoutFloor();
  assert.equal(f.update({ rttMs: 152, lossPct: 0 }, 0), null, 'a clean link: the browser decides');
  assert.equal(f.update({ rttMs: 152, lossPct: 5 }, 5_000), 310);
  assert.equal(f.update({ rttMs: 40, lossPct: 1 }, 10_000), 80, 'follows the round trip');
  assert.equal(floorFor(1_000), FLOOR_MAX_MS, 'however long the round trip');
  assert.equal(floorFor(-3), 0);
});

test(`the floor stays through a quiet spell and goes after ${CLEAR_MS / 1000} s without loss`, () => {
  const f = new PlayoutFloor();
  f.update({ rttMs: 150, lossPct: 5 }, 0);
  assert.equal(f.update({ rttMs: 150, lossPct: 0 }, 5_000), 300);
  assert.equal(f.update({ rttMs: 150, lossPct: 2 }, 10_000), 300, 'loss again: the quiet spell starts over');
  assert.equal(f.update({ rttMs: 150, lossPct: 0 }, 15_000), 300);
  assert.equal(f.update({ rttMs: 150, lossPct: 0 }, 15_000 + CLEAR_MS - 1), 300);
  assert.equal(f.update({ rttMs: 150, lossPct: 0 }, 15_000 + CLEAR_MS), null);
  f.update({ rttMs: 150, lossPct: 5 }, 60_000);
  f.reset();
  assert.equal(f.ms, null, 'a new session starts without one');
});

test('figures that are missing or garbled change nothing', () => {
  const f = new PlayoutFloor();
  f.update({ rttMs: 100, lossPct: 3 }, 0);
  for (const link of [null, {}, { rttMs: 'x', lossPct: 9 }, { rttMs: 100, lossPct: NaN }]) {
    assert.equal(f.update(link, 1_000), 200, JSON.stringify(link));
  }
});

test('the floor is set on video receivers only, and only where the browser has it', () => {
  const video = { track: { kind: 'video' }, jitterBufferTarget: null };
  const audio = { track: { kind: 'audio' }, jitterBufferTarget: null };
  const older = { track: { kind: 'video' } }; // a browser without jitterBufferTarget
  applyFloor([video, audio, older], 300);
  assert.equal(video.jitterBufferTarget, 300);
  assert.equal(audio.jitterBufferTarget, null);
  assert.ok(!('jitterBufferTarget' in older));
  applyFloor([video], null);
  assert.equal(video.jitterBufferTarget, null);
});
