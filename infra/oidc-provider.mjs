// A throwaway OpenID Connect provider for the login tests: npm's
// `oidc-provider` (a certified implementation) with its development
// interactions (any login name and password are accepted; the account's
// email is the login name if it holds an `@`, or what follows `|` in it;
// a name starting with `unverified` has an unverified address).
//
//   node infra/oidc-provider.mjs MODULE_DIR PORT REDIRECT_URI
//
// MODULE_DIR is where `oidc-provider` is installed (infra/install-deps
// puts it in ~/.cache/carapace/oidc). One client: `carapace`, secret
// `carapace-test-secret`, PKCE required.
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';

const [moduleDir, port, redirect] = process.argv.slice(2);
const { default: Provider } = await import(
  pathToFileURL(join(moduleDir, 'node_modules', 'oidc-provider', 'lib', 'index.js')).href
);
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: 'carapace',
    client_secret: 'carapace-test-secret',
    redirect_uris: [redirect],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  claims: { email: ['email', 'email_verified'], groups: ['groups'], openid: ['sub'] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({
      sub: id,
      // `ACCOUNT|ADDRESS` gives another account the same address.
      email: id.includes('|') ? id.split('|')[1] : (id.includes('@') ? id : `${id}@example.com`),
      email_verified: !id.startsWith('unverified'),
      // `eng-…` accounts are in the group `eng`, others in `sales`.
      groups: id.startsWith('eng-') ? ['eng'] : ['sales'],
    }),
  }),
});
provider.listen(Number(port), '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
