// Scenario `csp`: an admin visits every page of the console. The page and its assets carry the
// Content-Security-Policy and the other security headers, every request the page made went to
// the server's own origin, nothing violated the policy, no script error, and a state-changing
// request with the session cookie but without the right CSRF token is refused.

import {
  check,
  checkNoViolations,
  checkOwnOrigin,
  checkTablesNamed,
  env,
  heading,
  logInFresh,
  visit,
} from './lib.mjs';

const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/** The headers every response carries (the server serves TLS here). */
async function checkHeaders(response) {
  const h = await response.allHeaders();
  const where = response.url();
  check(h['content-security-policy'] === CSP, `${where}: CSP is ${h['content-security-policy']}`);
  check(h['x-frame-options'] === 'DENY', `${where}: X-Frame-Options ${h['x-frame-options']}`);
  check(h['x-content-type-options'] === 'nosniff', `${where}: X-Content-Type-Options`);
  check(h['referrer-policy'] === 'no-referrer', `${where}: Referrer-Policy ${h['referrer-policy']}`);
  check(/^max-age=31536000/.test(h['strict-transport-security'] ?? ''), `${where}: no HSTS`);
}

export default async function csp(browser, { page, rec }) {
  const { machine, done } = env;
  await logInFresh(page, 'ada');
  for (const route of [
    '#/machines',
    `#/machines/${machine}`,
    '#/sites',
    '#/run',
    '#/dispatches',
    `#/dispatches/${done}`,
    '#/trail',
  ]) {
    await visit(page, route);
    check((await heading(page)).length > 0, `${route} has an <h1>`);
    await page.getByRole('table').first().waitFor().catch(() => {});
    await checkTablesNamed(page, route);
  }

  const byPath = (p) => rec.responses.filter((r) => new URL(r.url()).pathname === p);
  for (const p of ['/', '/assets/app.js', '/assets/app.css', '/v1/session']) {
    const seen = byPath(p);
    check(seen.length > 0, `the page never loaded ${p}`);
    for (const r of seen) await checkHeaders(r);
  }
  const types = {
    '/': 'text/html; charset=utf-8',
    '/assets/app.js': 'text/javascript; charset=utf-8',
    '/assets/app.css': 'text/css; charset=utf-8',
  };
  for (const [p, t] of Object.entries(types)) {
    const got = (await byPath(p)[0].allHeaders())['content-type'];
    check(got === t, `${p} is served as ${got}`);
  }
  checkOwnOrigin(rec);
  await checkNoViolations(page, rec);
  check(rec.errors.length === 0, `uncaught errors in the page: ${rec.errors.join('; ')}`);
  const inline = await page.evaluate(() => ({
    scripts: document.querySelectorAll('script:not([src])').length,
    styles: document.querySelectorAll('style').length,
  }));
  check(inline.scripts === 0 && inline.styles === 0, `inline script/style elements: ${JSON.stringify(inline)}`);

  // The cookie alone changes nothing: no CSRF token, or another one, is refused.
  const csrf = await page.evaluate(async () => {
    const post = async (headers) => {
      const r = await fetch('/v1/sites', {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: JSON.stringify({ site_code: 'csrf', display_name: 'Forged' }),
      });
      return { status: r.status, body: await r.json().catch(() => null) };
    };
    return [await post({}), await post({ 'x-csrf-token': 'forged-token' })];
  });
  for (const a of csrf) {
    check(a.status === 403 && a.body?.error?.kind === 'forbidden', `a POST without the CSRF token: ${JSON.stringify(a)}`);
    check(
      a.body?.error?.message === 'missing or wrong CSRF token; reload the console',
      `the CSRF refusal's message: ${a.body?.error?.message}`,
    );
  }
  await visit(page, '#/sites');
  check((await page.getByRole('cell', { name: 'csrf', exact: true }).count()) === 0, 'a forged site exists');
  check(env.url.startsWith('https://'), 'the test serves TLS');
}
