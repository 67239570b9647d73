// coturn for the browser tests: Debian's `turnserver`, run from the production
// configuration (infra/coturn/turnserver.conf) with the test's addresses, ports, secret and
// a self-signed test certificate in place of the deployment's. The same settings are
// replaced as in signalling/tests/common/coturn.rs; the restrictions run as shipped.

import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import * as h from './harness.mjs';

const run = promisify(execFile);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export const PRODUCTION_CONFIG = path.join(h.REPO_ROOT, 'infra', 'coturn', 'turnserver.conf');

/** The settings a deployment changes, replaced by the test's own. */
const REPLACED = new Set([
  'listening-ip', 'relay-ip', 'external-ip', 'listening-port', 'tls-listening-port', 'min-port', 'max-port',
  'static-auth-secret', 'realm', 'server-name', 'allowed-peer-ip', 'cert', 'pkey', 'syslog', 'log-file', 'pidfile',
]);

/** The production configuration without the REPLACED settings, plus `ours`. */
export function testConfig(production, ours) {
  const kept = production
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#') && !REPLACED.has(l.split('=')[0].trim()));
  return [...kept, ...ours].join('\n') + '\n';
}

/**
 * A self-signed certificate for `ip` and `name`, valid for a day, and the
 * base64 SHA-256 of its public key: what Chromium's `--ignore-certificate-errors-spki-list`
 * takes to trust exactly this certificate and no other.
 */
export async function testCertificate(dir, ip, name = 'turn.test') {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '1', '-subj', `/CN=${name}`,
    '-addext', `subjectAltName=DNS:${name},IP:${ip}`,
  ]);
  const { stdout: der } = await run('openssl', ['pkey', '-in', key, '-pubout', '-outform', 'DER'], { encoding: 'buffer' });
  const spki = createHash('sha256').update(der).digest('base64');
  return { cert, key, spki };
}

/** Resolves once something accepts TCP connections on ip:port. */
export async function listening(proc, ip, port, timeoutMs = 10_000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect({ host: ip, port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (proc.exitCode !== undefined || proc.spawnError) throw new Error(`${proc.name} exited (${proc.exitCode})\n${proc.tail()}`);
    if (Date.now() > end) throw new Error(`${proc.name} is not listening on ${ip}:${port}\n${proc.tail()}`);
    await sleep(20);
  }
}

/**
 * coturn on `ip`: TURN over UDP and TCP on `port`, over TLS on `tlsPort`, relaying only to
 * `sfu`; its URLs name it `name` (its certificate is for `ip` and turn.test). Resolves with { proc, secret, spki, urls } once both listeners accept
 * connections; `urls` are the three a deployment hands out (UDP, TCP, TLS), `spki` the
 * test certificate's key hash (testCertificate).
 */
export async function startCoturn(env, { ip, sfu, port = 3478, tlsPort = 443, name = ip }) {
  const dir = await env.tmpdir();
  const secret = randomBytes(32).toString('hex');
  const { cert, key, spki } = await testCertificate(dir, ip);
  const config = testConfig(await readFile(PRODUCTION_CONFIG, 'utf8'), [
    `listening-ip=${ip}`,
    `relay-ip=${ip}`,
    `listening-port=${port}`,
    `tls-listening-port=${tlsPort}`,
    'min-port=49152',
    'max-port=49999',
    `static-auth-secret=${secret}`,
    'realm=turn.test',
    'server-name=turn.test',
    `allowed-peer-ip=${sfu}`,
    `cert=${cert}`,
    `pkey=${key}`,
    'log-file=stdout',
    'simple-log',
    // Each allocation logged with its user name (never its password): tests read them.
    'verbose',
    `pidfile=${path.join(dir, 'turnserver.pid')}`,
  ]);
  const file = path.join(dir, 'turnserver.conf');
  await writeFile(file, config);
  const proc = env.spawn('turnserver', 'turnserver', ['-c', file]);
  await listening(proc, ip, port);
  await listening(proc, ip, tlsPort);
  return {
    proc,
    secret,
    spki,
    urls: [`turn:${name}:${port}?transport=udp`, `turn:${name}:${port}?transport=tcp`, `turns:${name}:${tlsPort}?transport=tcp`],
  };
}

export const NGINX_SNI_CONFIG = path.join(h.REPO_ROOT, 'infra', 'coturn', 'nginx-turn-sni.conf');

/**
 * The HTTPS front end sharing port 443 with coturn, as infra/coturn/nginx-turn-sni.conf
 * sets it up: Debian's nginx on `ip`:443 passes TLS connections for `turnName` to coturn's
 * TLS listener (`turn`, ip:port) by their SNI, and the rest to an HTTPS site on
 * 127.0.0.1:8443 (with a self-signed certificate for `siteName`) that proxies to consult
 * at `consult` (host:port). Resolves with { proc, spki } (the site certificate's key hash)
 * once 443 accepts connections.
 */
export async function startSniFrontEnd(env, { ip, turnName, turn, siteName, consult }) {
  const dir = await env.tmpdir();
  const { cert, key, spki } = await testCertificate(dir, '127.0.0.1', siteName);
  let stream = await readFile(NGINX_SNI_CONFIG, 'utf8');
  for (const [from, to] of [
    ['turn.example-hospital.org  10.0.0.10:5349;', `${turnName} ${turn};`],
    ['listen 10.0.0.10:443;', `listen ${ip}:443;`],
    ['default                    127.0.0.1:8443;', 'default 127.0.0.1:8443;'],
  ]) {
    if (!stream.includes(from)) throw new Error(`${NGINX_SNI_CONFIG} no longer has "${from}": update the test`);
    stream = stream.replace(from, to);
  }
  await writeFile(path.join(dir, 'stream.conf'), stream);
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `${t}_temp_path ${path.join(dir, t)};`).join('\n  ');
  await writeFile(
    path.join(dir, 'nginx.conf'),
    `daemon off;
worker_processes 1;
pid ${path.join(dir, 'nginx.pid')};
error_log stderr notice;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events { worker_connections 256; }
http {
  access_log off;
  ${temp}
  server {
    listen 127.0.0.1:8443 ssl;
    server_name ${siteName};
    ssl_certificate ${cert};
    ssl_certificate_key ${key};
    location / {
      proxy_pass http://${consult};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Host $host;
    }
  }
}
include ${path.join(dir, 'stream.conf')};
`,
  );
  const proc = env.spawn('nginx', 'nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-e', 'stderr']);
  await listening(proc, ip, 443);
  return { proc, spki };
}
