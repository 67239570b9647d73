// A network of its own for one browser, so that a test can block what that browser may
// send with nftables (childNetwork), or carry it over an impaired link (impairedNetwork),
// while everything else (servers, the other browsers) is untouched.
//
// Inside the test's namespace (scripts/browser-tests: `unshare --net`, only `lo`), this
// makes a child namespace joined to it by a veth pair, and a Chromium launcher that runs
// Debian's Chromium in it (`nsenter --net`). Addresses are from 198.18.0.0/15, the range
// set aside for network tests: the servers listen on the test namespace's side, the
// browser has the other end. Needs root, iproute2, util-linux and nftables (the test
// command installs nftables where it is missing).

import { execFile } from 'node:child_process';
import { chmod, readlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';
import * as h from './harness.mjs';

const run = promisify(execFile);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The servers' side of the veth (consult, the SFU's media, and coturn's own address). */
export const SERVER_IP = '198.18.0.1';
export const TURN_IP = '198.18.0.3';
/** The blocked browser's address. */
export const BROWSER_IP = '198.18.0.2';

let made = 0;

/**
 * A child network namespace joined to this one by a veth pair; resolves with
 *   { pid, exec(cmd, args, input), block(rules), counters(), launchChromium(extraArgs) }
 * Everything is removed with the environment (the namespace ends with its holder).
 */
export async function childNetwork(env) {
  const ns = await childNamespace(env);
  made += 1;
  const host = `tb${process.pid % 10000}h${made}`; // interface names: 15 characters at most
  const peer = `tb${process.pid % 10000}c${made}`;
  await run('ip', ['link', 'add', host, 'type', 'veth', 'peer', 'name', peer, 'netns', String(ns.pid)]);
  env.servers.push({ close: () => run('ip', ['link', 'del', host]).catch(() => {}) });
  await noLinkLocal(ns, host, peer);
  for (const ip of [SERVER_IP, TURN_IP]) await run('ip', ['addr', 'add', `${ip}/24`, 'dev', host]);
  await run('ip', ['link', 'set', host, 'up']);
  await ns.exec('ip', ['addr', 'add', `${BROWSER_IP}/24`, 'dev', peer]);
  await ns.exec('ip', ['link', 'set', peer, 'up']);
  await waitUp(ns, peer);
  return ns;
}

/**
 * Like childNetwork, but joined to this namespace by `impair` (load-tests/src/bin/impair.rs,
 * $IMPAIR_BIN): a userspace link over two TUN devices, one moved into the child, with
 * loss, delay, jitter and a rate cap per direction, changeable while it runs. Resolves
 * with childNetwork's fields plus
 *   set(direction, {loss, delay, jitter, rate, queue}) — 'up' (from the child), 'down'
 *     (toward it) or 'both'; loss in %, delay, jitter and queue in ms, rate in kbit/s
 *     or 'off'; only the settings named change;
 *   clear() — a perfect link both ways;
 *   counters() — {up, down}: packets, bytes, sent_packets, sent_bytes, lost, queue_dropped.
 * The relay stops with the environment, and by itself after `maxSeconds`.
 */
export async function impairedNetwork(env, { seed = 1, maxSeconds = 900 } = {}) {
  const ns = await childNamespace(env);
  made += 1;
  const client = `ti${process.pid % 10000}c${made}`;
  const server = `ti${process.pid % 10000}s${made}`;
  await h.requireExecutable(h.IMPAIR_BIN, 'impair binary (cargo build -p load-tests --bin impair)');
  const relay = env.spawn(
    'impair',
    h.IMPAIR_BIN,
    ['--client-tun', client, '--server-tun', server, '--seed', String(seed), '--max-seconds', String(maxSeconds)],
    { keepStdin: true },
  );
  await relay.waitForLine(/^ready /m, 10_000);
  await run('ip', ['link', 'set', client, 'netns', String(ns.pid)]);
  await noLinkLocal(ns, server, client);
  for (const ip of [SERVER_IP, TURN_IP]) await run('ip', ['addr', 'add', `${ip}/24`, 'dev', server]);
  await run('ip', ['link', 'set', server, 'up']);
  await ns.exec('ip', ['addr', 'add', `${BROWSER_IP}/24`, 'dev', client]);
  await ns.exec('ip', ['link', 'set', client, 'up']);
  await ns.exec('ip', ['route', 'add', 'default', 'dev', client]);
  await waitUp(ns, client);

  // One command at a time: its answer is the next lines of the relay's output.
  let seen = relay.stdout.length;
  let queue = Promise.resolve();
  const ask = (line, lines = 1) => {
    const answer = queue.then(async () => {
      const from = seen;
      relay.child.stdin.write(`${line}\n`);
      for (let i = 0; ; i++) {
        const got = relay.stdout.slice(from).split('\n');
        if (got.length > lines) {
          const out = got.slice(0, lines);
          seen = from + out.join('\n').length + 1;
          if (out[0].startsWith('error: ')) throw new Error(`impair refused \`${line}\`: ${out[0]}`);
          return out;
        }
        if (relay.exitCode !== undefined) throw new Error(`impair exited before answering \`${line}\`\n${relay.tail()}`);
        if (i > 500) throw new Error(`impair did not answer \`${line}\`\n${relay.tail()}`);
        await sleep(10);
      }
    });
    queue = answer.catch(() => {});
    return answer;
  };
  const parse = (line) => Object.fromEntries(line.split(' ').slice(2).map((kv) => kv.split('=')).map(([k, v]) => [k, Number(v)]));
  return {
    ...ns,
    relay,
    async set(direction, settings) {
      const pairs = Object.entries(settings).map(([k, v]) => `${k}=${v}`);
      await ask(`${direction} ${pairs.join(' ')}`);
    },
    async clear() {
      await ask('clear');
    },
    async counters() {
      const [up, down] = await ask('counters', 2);
      return { up: parse(up), down: parse(down) };
    },
  };
}

/**
 * A child network namespace (only `lo`, up) and a Chromium launcher for it, with the
 * nft helpers; the caller joins it to this one.
 */
async function childNamespace(env) {
  const dir = await env.tmpdir();
  // The namespace lives as long as this process, which does nothing else.
  const holder = env.spawn('netns holder', 'unshare', ['--net', '--', 'sleep', '3600']);
  const ours = await readlink('/proc/self/ns/net');
  const nsPath = `/proc/${holder.child.pid}/ns/net`;
  for (let i = 0; ; i++) {
    if (holder.exitCode !== undefined || holder.spawnError) throw new Error(`unshare --net failed\n${holder.tail()}`);
    const theirs = await readlink(nsPath).catch(() => ours);
    if (theirs !== ours) break;
    if (i > 200) throw new Error('the child network namespace did not appear');
    await sleep(10);
  }
  const exec = (cmd, args, input) => {
    const p = run('nsenter', [`--net=${nsPath}`, '--', cmd, ...args]);
    if (input !== undefined) {
      p.child.stdin.end(input);
    }
    return p;
  };
  await exec('ip', ['link', 'set', 'lo', 'up']);

  // Debian's Chromium, started inside the child namespace.
  const launcher = path.join(dir, 'chromium-in-netns');
  await writeFile(launcher, `#!/bin/sh\nexec nsenter --net=${nsPath} -- ${h.CHROMIUM} "$@"\n`);
  await chmod(launcher, 0o755);

  return {
    pid: holder.child.pid,
    exec,
    /**
     * Replaces the child's firewall with `rules` (nft syntax for the body of an `inet`
     * table named `blocked`); every rule that drops should count (`counter drop`).
     */
    async block(rules) {
      await exec('nft', ['delete', 'table', 'inet', 'blocked']).catch(() => {});
      await exec('nft', ['-f', '-'], `table inet blocked {\n${rules}\n}\n`);
    },
    /** The child's firewall with its counters, as nft lists it. */
    async ruleset() {
      const { stdout } = await exec('nft', ['list', 'table', 'inet', 'blocked']);
      return stdout;
    },
    /** Chromium in the child namespace (the harness's arguments, and `extraArgs`). */
    launchChromium(extraArgs = []) {
      return chromium.launch({ executablePath: launcher, headless: true, args: [...h.CHROMIUM_ARGS, ...extraArgs] });
    },
  };
}

/**
 * No IPv6 link-local address on a new link pair (`host` here, `child` in the child). The
 * kernel would add one about 2 s after the link comes up, once duplicate address detection
 * is done; Chromium takes that for a change of network and fails every request in flight
 * with ERR_NETWORK_CHANGED, so a page opened in that window lost its scripts (a flaky
 * test). The tests use IPv4 only. Set while the links are still down.
 */
async function noLinkLocal(ns, host, child) {
  await run('ip', ['link', 'set', host, 'addrgenmode', 'none']);
  await ns.exec('ip', ['link', 'set', child, 'addrgenmode', 'none']);
}

/** Waits for a link in the child to come up (a veth's carrier takes a moment). */
async function waitUp(ns, link) {
  for (let i = 0; ; i++) {
    const { stdout } = await ns.exec('ip', ['-o', 'link', 'show', link]);
    if (/state UP|LOWER_UP/.test(stdout)) break;
    if (i > 200) throw new Error(`${link} did not come up: ${stdout}`);
    await sleep(10);
  }
}

/** The packets an nft rule listing says its `counter` rules counted, summed. */
export function counted(listing, match) {
  let n = 0;
  for (const line of listing.split('\n')) {
    if (!line.includes(match)) continue;
    const m = /counter packets (\d+)/.exec(line);
    if (m) n += Number(m[1]);
  }
  return n;
}
