// A network of its own for one browser, so that a test can block what that browser may
// send with nftables while everything else (servers, the other browsers) is untouched.
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
  made += 1;
  const host = `tb${process.pid % 10000}h${made}`; // interface names: 15 characters at most
  const peer = `tb${process.pid % 10000}c${made}`;
  await run('ip', ['link', 'add', host, 'type', 'veth', 'peer', 'name', peer, 'netns', String(holder.child.pid)]);
  env.servers.push({ close: () => run('ip', ['link', 'del', host]).catch(() => {}) });
  for (const ip of [SERVER_IP, TURN_IP]) await run('ip', ['addr', 'add', `${ip}/24`, 'dev', host]);
  await run('ip', ['link', 'set', host, 'up']);
  await exec('ip', ['link', 'set', 'lo', 'up']);
  await exec('ip', ['addr', 'add', `${BROWSER_IP}/24`, 'dev', peer]);
  await exec('ip', ['link', 'set', peer, 'up']);
  // The veth needs a moment before it carries packets (its carrier comes up).
  for (let i = 0; ; i++) {
    const { stdout } = await exec('ip', ['-o', 'link', 'show', peer]);
    if (/state UP|LOWER_UP/.test(stdout)) break;
    if (i > 200) throw new Error(`veth ${peer} did not come up: ${stdout}`);
    await sleep(10);
  }

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
