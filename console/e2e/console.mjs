// The operator console driven in a real browser, one scenario per run:
//   node console.mjs admin|viewer|escapes|csp
// Started by the Rust test crates/warden-agent/tests/console.rs, which runs the real
// warden-server, wardend hosts and agents and passes what the scenario needs as JSON in
// `WARDEN_E2E` (url, ca, work, shots, password, and the scenario's machines and dispatches).
// The browser does the operator's work; when a host has to act (enroll, clone) or the API has
// to be checked from outside, the script asks the harness with a line on stdout (`need …`,
// `check …`) and waits for `ok …` on stdin. Its last line is `pass`, or `fail <why>` with a
// screenshot of the page that failed.

import fs from 'node:fs';
import path from 'node:path';
import { env, launch, log, openPage, shot } from './lib.mjs';
import admin from './admin.mjs';
import viewer from './viewer.mjs';
import escapes from './escapes.mjs';
import csp from './csp.mjs';

const scenarios = { admin, viewer, escapes, csp };
const name = process.argv[2];
const scenario = scenarios[name];
if (!scenario) {
  process.stdout.write(`fail unknown scenario ${name}\n`);
  process.exit(2);
}

let browser;
let current;
// Playwright closes the browser it launched on SIGTERM/SIGINT itself; this ends the run
// cleanly when the harness goes away (stdin closed) as well.
process.stdin.on('end', () => {
  log('stdin closed by the harness; stopping');
  browser?.close().finally(() => process.exit(3));
});

// A failure picture of an earlier run would mislead whoever looks at this one.
fs.rmSync(path.join(env.shots, `failure-${name}-laptop.png`), { force: true });

try {
  browser = await launch();
  current = await openPage(browser);
  await scenario(browser, current);
  process.stdout.write('pass\n');
} catch (e) {
  const why = String(e?.stack ?? e).replace(/\s+/g, ' ');
  try {
    await shot(current.page, `failure-${name}`);
    log(`the failing page: ${path.join(env.shots, `failure-${name}-laptop.png`)}`);
    log(`recorded console: ${current.rec.console.join(' | ')}`);
    log(`recorded page errors: ${current.rec.errors.join(' | ')}`);
    log(`the last requests: ${current.rec.exchanges.slice(-12).join(' | ')}`);
    const invalid = await current.page.evaluate(() =>
      [...document.querySelectorAll('input:invalid, select:invalid, textarea:invalid')].map(
        (e) => `${e.labels?.[0]?.textContent?.trim() ?? e.name}: ${e.validationMessage}`,
      ),
    );
    log(`fields the browser holds invalid: ${invalid.join(' | ')}`);
  } catch {
    // No page to show.
  }
  process.stdout.write(`fail ${why}\n`);
  process.exitCode = 1;
} finally {
  await browser?.close().catch(() => {});
}
process.exit();
