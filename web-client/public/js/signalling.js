// The websocket to the signalling server, as every page uses it: `hello` with a token,
// commands answered by `ack` or `error` (matched by `req`), live events, and reconnection
// with backoff. On every (re)connection the server sends the current state again
// (`welcome`, then snapshots or the patient's status), so a page only has to render what
// it is told; it never patches state across a reconnect.
//
// Wire messages: signalling/protocol/src/lib.rs (JSON examples in
// signalling/protocol/fixtures/).
//
//   const sig = new Signalling({ token, onMessage, onState });
//   sig.connect();
//   await sig.command({ type: 'admit_next', clinic });   // resolves on ack, rejects on error
//   sig.send({ type: 'join_media', consultation });      // media messages have no req
//   sig.close();

/** Error codes after which saying hello again cannot help. */
export const FATAL_CODES = new Set(['unauthenticated', 'token_expired', 'visit_ended', 'session_ended']);
/** Websocket close codes the server uses for a credential or visit that is over. */
const FATAL_CLOSES = new Set([4001, 4002]);

/**
 * How long a page waits before trying again, after `retry` tries since it was last
 * welcomed, its last connection having closed with `code`. A connection that dropped (a
 * new network, a lost link) is tried again at once, within 250 ms; a server restarting
 * (1012) is given 0.5 s. Then 1 s, 2 s ... at most 10 s; but at most 2 s while the server
 * says its store is away (1013, "try again later"), so that pages are back within
 * seconds of the store's return (each try costs the server a refusal, not a wait).
 * Always with jitter, so a restarted server is not hit by every browser at once.
 * The load tests' rush (load-tests/src/bin/rush.rs) behaves the same.
 */
export function reconnectDelay(retry, code, random = Math.random) {
  if (retry === 0 && code !== 1012) return random() * 250;
  const cap = code === 1013 ? 2_000 : 10_000;
  return Math.min(cap, 500 * 2 ** retry) * (0.75 + random() / 2);
}

/** A refused command: `code` is the server's stable error code, `message` plain English. */
export class CommandError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export class Signalling {
  #ws = null;
  #nextReq = 1;
  #pending = new Map(); // req -> {resolve, reject, timer}
  #retry = 0;
  #timer = null;
  #closed = false;

  /**
   * @param {object} o
   * @param {string} o.token  a staff token or a visit credential
   * @param {(msg: object) => void} o.onMessage  every server message but ack/command errors
   * @param {(s: {state: 'connecting'|'open'|'reconnecting'|'closed', fatal?: object}) => void} [o.onState]
   * @param {string} [o.url]  defaults to this origin's /ws
   */
  constructor({ token, onMessage, onState, url }) {
    this.token = token;
    this.onMessage = onMessage;
    this.onState = onState || (() => {});
    this.url = url || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    this.state = 'closed';
  }

  connect() {
    this.#closed = false;
    this.#open();
  }

  /** Closes for good (sign-out, visit over). */
  close() {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#failPending('closed', 'the connection was closed');
    if (this.#ws) this.#ws.close(1000);
    this.#setState('closed');
  }

  /** Sends a message that has no answer of its own (media messages). */
  send(msg) {
    if (this.#ws?.readyState === WebSocket.OPEN) {
      this.#ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  /** Sends a command; resolves on `ack`, rejects with a CommandError. */
  command(command, timeoutMs = 10_000) {
    return new Promise((resolve, reject) => {
      const req = this.#nextReq++;
      if (!this.send({ type: 'command', req, command })) {
        reject(new CommandError('unavailable', 'Not connected. Trying again…'));
        return;
      }
      const timer = setTimeout(() => {
        this.#pending.delete(req);
        reject(new CommandError('unavailable', 'The server did not answer in time.'));
      }, timeoutMs);
      this.#pending.set(req, { resolve, reject, timer });
    });
  }

  #setState(state, extra = {}) {
    this.state = state;
    this.onState({ state, ...extra });
  }

  #open() {
    clearTimeout(this.#timer);
    this.#setState(this.#retry ? 'reconnecting' : 'connecting');
    const ws = new WebSocket(this.url);
    this.#ws = ws;
    let fatal = null;
    ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', token: this.token }));
    ws.onmessage = (e) => {
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        return;
      }
      if (msg.type === 'welcome') {
        this.#retry = 0;
        this.#setState('open');
      }
      if (msg.type === 'ack' || (msg.type === 'error' && msg.req != null)) {
        const p = this.#pending.get(msg.req);
        if (p) {
          this.#pending.delete(msg.req);
          clearTimeout(p.timer);
          if (msg.type === 'ack') p.resolve();
          else p.reject(new CommandError(msg.code, msg.message));
        }
        return;
      }
      if (msg.type === 'error' && FATAL_CODES.has(msg.code)) fatal = msg;
      this.onMessage(msg);
    };
    ws.onclose = (e) => {
      if (this.#ws !== ws) return;
      this.#ws = null;
      this.#failPending('unavailable', 'The connection dropped. Trying again…');
      if (this.#closed) return;
      if (fatal || FATAL_CLOSES.has(e.code)) {
        this.#closed = true;
        this.#setState('closed', { fatal: fatal || { code: e.code === 4002 ? 'visit_ended' : 'unauthenticated' } });
        return;
      }
      const delay = reconnectDelay(this.#retry, e.code);
      this.#retry += 1;
      this.#setState('reconnecting');
      this.#timer = setTimeout(() => this.#open(), delay);
    };
  }

  #failPending(code, message) {
    for (const [, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(new CommandError(code, message));
    }
    this.#pending.clear();
  }
}
