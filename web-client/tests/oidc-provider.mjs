// A real OpenID Connect provider for the tests (the certified `oidc-provider` package),
// on a loopback port of its own: one confidential client (`consult`) that must use PKCE,
// refresh tokens for it, its own login and consent pages (any password: the
// package's development interactions), and accounts whose `groups` claim the test
// changes between steps through a small admin endpoint:
//
//   POST /test/accounts/{id}  {"name": "...", "groups": ["..."]}   create or change one
//
// Run: node tests/oidc-provider.mjs '{"redirect_uri": "...", "client_secret": "...",
// "accounts": {"alice": {"name": "Alice", "groups": ["derm-reception"]}}}'
// It prints one line of JSON, {"issuer": "http://127.0.0.1:PORT"}, once it listens, and
// stops when its standard input closes (or after WATCHDOG_MS, 10 minutes by default).
import http from 'node:http';
import Provider from 'oidc-provider';

const opts = JSON.parse(process.argv[2] || '{}');
const accounts = new Map(Object.entries(opts.accounts || {}));
const watchdog = setTimeout(() => process.exit(3), Number(process.env.WATCHDOG_MS || 600_000));
watchdog.unref();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'consult',
      client_secret: opts.client_secret,
      redirect_uris: [opts.redirect_uri],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    // Another application at the same provider: its codes and ID tokens are not consult's.
    {
      client_id: 'other-app',
      client_secret: 'other-app-secret-other-app-secret',
      redirect_uris: [opts.redirect_uri],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  pkce: { required: () => true },
  scopes: ['openid', 'offline_access', 'profile', 'groups'],
  claims: { openid: ['sub'], profile: ['name', 'preferred_username'], groups: ['groups'] },
  // The scopes' claims in the ID token too (consult reads groups there, else userinfo).
  conformIdTokenClaims: false,
  // A refresh token for every sign-in of a client allowed to refresh (without it the
  // package asks offline_access plus prompt=consent).
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  findAccount: async (_ctx, id) => {
    if (!accounts.has(id)) return undefined;
    return {
      accountId: id,
      claims: async () => {
        const a = accounts.get(id);
        return a ? { sub: id, name: a.name, preferred_username: id, groups: a.groups } : { sub: id };
      },
    };
  },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['test-cookie-key-test-cookie-key'] },
  ttl: { AccessToken: 600, IdToken: 600, RefreshToken: 3600, Session: 3600, Grant: 3600, Interaction: 600 },
});
// The development login page accepts any login: only known accounts sign in here.
provider.on('server_error', (_ctx, err) => console.error('provider error', err));
const callback = provider.callback();

server.on('request', (req, res) => {
  const m = /^\/test\/accounts\/([a-z0-9._-]+)$/.exec(req.url);
  if (req.method === 'POST' && m) {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      try {
        const a = JSON.parse(body);
        accounts.set(m[1], { name: a.name, groups: a.groups || [] });
        res.writeHead(204).end();
      } catch {
        res.writeHead(400).end();
      }
    });
    return;
  }
  callback(req, res);
});
console.log(JSON.stringify({ issuer }));
