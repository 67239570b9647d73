// How long this page's browser holds the video it receives before showing it, at least,
// so that a packet lost on its downlink can still be repaired in time.
//
// A lost packet is repaired by the SFU's retransmission one round trip after the
// browser's NACK. When that retransmission, or the NACK, is lost too (as often as any
// packet: 5 % at 5 % loss), the browser asks again after another round trip, and the frame
// comes about two round trips (plus a frame, when the frame's last packet was the one
// lost) after its time. Chrome's own jitter buffer holds video for about one round trip,
// so at 5 % loss and 150 ms a frame came 300 to 380 ms late a few times a minute, and the
// picture froze each time (measured through the SFU: 2 to 7 freezes a minute). Held for
// two round trips, the repair is in time (1 freeze a minute, of a frame three times lost).
//
// The figures are the SFU's for this page's downlink (`media_link`: its round trip and
// loss, every 5 s). The floor is set only while the downlink loses packets, and taken
// off once it has lost none for CLEAR_MS: on a clean link the browser's own delay stands.
// It is a floor: the browser still holds longer when its jitter asks for it. Audio follows
// the video's delay (lip sync), so on a lossy link the conversation is as much later.

/** The downlink's loss (%, as the SFU reports it, rounded) from which the floor is set. */
export const LOSS_FROM_PCT = 1;
/** How long (ms) the downlink must lose nothing before the floor is taken off. */
export const CLEAR_MS = 30_000;
/** The most (ms) video is held for repairs, however long the round trip: past this, a
 * conversation is hard to hold, and a picture that waits is worse than one that freezes. */
export const FLOOR_MAX_MS = 600;
/** Round trips held for: a lost NACK or a lost retransmission is asked again once. */
const ROUND_TRIPS = 2;

/**
 * The playout floor of one media session: `update(link, now)` with each `media_link`
 * ({rttMs, lossPct}) returns the floor (ms) the session's video receivers should hold, or
 * null for none (the browser's own).
 */
export class PlayoutFloor {
  ms = null;
  #lossless = null; // since when (ms) the downlink has lost nothing, while a floor is set

  update(link, now) {
    if (!link || !Number.isFinite(link.rttMs) || !Number.isFinite(link.lossPct)) return this.ms;
    if (link.lossPct >= LOSS_FROM_PCT) {
      this.#lossless = null;
      this.ms = floorFor(link.rttMs);
    } else if (this.ms != null) {
      this.#lossless ??= now;
      if (now - this.#lossless >= CLEAR_MS) this.reset();
      // Still lossy in the recent past: the floor follows the round trip.
      else this.ms = floorFor(link.rttMs);
    }
    return this.ms;
  }

  /** No floor: a new session starts on the browser's own delay. */
  reset() {
    this.ms = null;
    this.#lossless = null;
  }
}

/** Two round trips, to the next 10 ms, at most FLOOR_MAX_MS. */
export function floorFor(rttMs) {
  return Math.min(FLOOR_MAX_MS, Math.ceil((ROUND_TRIPS * Math.max(0, rttMs)) / 10) * 10);
}

/** Sets `ms` (null: none) as the playout floor of each video receiver in `receivers`. */
export function applyFloor(receivers, ms) {
  for (const r of receivers) {
    // jitterBufferTarget (ms; null restores the browser's own): Chrome and Safari. Where a
    // browser lacks it, nothing changes.
    if (r.track?.kind !== 'video' || !('jitterBufferTarget' in r)) continue;
    if (r.jitterBufferTarget !== ms) r.jitterBufferTarget = ms;
  }
}
