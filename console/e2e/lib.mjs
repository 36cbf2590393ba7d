// What every scenario of the console's browser test shares: the line protocol with the Rust
// harness (which does the hosts' side: wardend, agents, checks through the API), the browser
// (Debian's headless Chromium, trusting only the test server's certificate), a recorder of
// what each page asked for and complained about, small waiting and checking helpers, and
// screenshots. Secrets (enrollment keys, session tokens) never go to stdout or stderr: they are
// handed over in files the harness names.

import { chromium } from 'playwright-core';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import tls from 'node:tls';

/** What the harness tells the script, as JSON in `WARDEN_E2E`. */
export const env = JSON.parse(process.env.WARDEN_E2E ?? '{}');
export const origin = new URL(env.url ?? 'https://invalid').origin;

export const LAPTOP = { width: 1366, height: 900 };
export const PHONE = { width: 390, height: 844 };

/** Milliseconds any single step of the browser may take. */
export const STEP_MS = 15_000;

const input = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** A diagnostic line on stderr (the harness prints it under the scenario's name). */
export function log(...args) {
  process.stderr.write(`${args.join(' ')}\n`);
}

/**
 * Asks the harness to do `line` (`need …` or `check …`) and waits for its `ok …`; the words
 * after `ok`. Any other answer, a closed stdin or no answer within `ms` is a failure.
 */
export async function ask(line, ms = 60_000) {
  process.stdout.write(`${line}\n`);
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve({ timedOut: true }), ms);
  });
  const r = await Promise.race([input.next(), timeout]);
  clearTimeout(timer);
  if (r.timedOut) throw new Error(`the harness did not answer "${line}" within ${ms} ms`);
  if (r.done) throw new Error(`the harness closed the line before answering "${line}"`);
  const [word, ...rest] = r.value.trim().split(' ');
  if (word !== 'ok') throw new Error(`the harness answered "${line}" with: ${r.value}`);
  return rest;
}

/** Fails the scenario with `message` unless `cond`. */
export function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Calls `probe` until it returns something truthy (returned), or fails after `ms`. */
export async function until(what, probe, ms = STEP_MS) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`never ${what} within ${ms} ms (last: ${last})`);
    await sleep(200);
  }
}

/** A file in the harness's work directory for a secret it has to read. */
export function secretFile(name, value) {
  const p = path.join(env.work, name);
  fs.writeFileSync(p, `${value}\n`, { mode: 0o600 });
  return p;
}

/**
 * The SPKI hash of the certificate the server presents, checked by Node against the test CA
 * first: Chromium is told to accept exactly that key (`--ignore-certificate-errors-spki-list`)
 * instead of ignoring every certificate error.
 */
async function pinnedSpki() {
  const { hostname, port } = new URL(env.url);
  const cert = await new Promise((resolve, reject) => {
    const s = tls.connect(
      { host: hostname, port: Number(port), ca: fs.readFileSync(env.ca) },
      () => {
        const c = s.getPeerX509Certificate();
        s.end();
        resolve(c);
      },
    );
    s.on('error', reject);
  });
  const der = cert.publicKey.export({ type: 'spki', format: 'der' });
  return crypto.createHash('sha256').update(der).digest('base64');
}

/** Debian's Chromium, headless, with nothing that talks to anyone but the page's server. */
export async function launch() {
  const spki = await pinnedSpki();
  return chromium.launch({
    executablePath: env.chromium ?? '/usr/bin/chromium',
    headless: true,
    timeout: 30_000,
    args: [
      '--no-sandbox',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-dev-shm-usage',
      `--ignore-certificate-errors-spki-list=${spki}`,
    ],
  });
}

/**
 * A fresh browser context (its own cookies) and page at laptop size, with a recorder of every
 * request, response, console message, CSP violation, dialog and uncaught error.
 */
export async function openPage(browser) {
  const context = await browser.newContext({ viewport: LAPTOP });
  context.setDefaultTimeout(STEP_MS);
  const rec = {
    requests: [],
    responses: [],
    console: [],
    dialogs: [],
    errors: [],
    /** `METHOD path -> status` of each finished request, for the failure report. */
    exchanges: [],
    /** Requests started and not yet finished (live streams left out). */
    inflight: 0,
  };
  // Runs before the page's own script; CSP does not apply to it (Playwright injects it).
  await context.addInitScript(() => {
    window.__violations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  const page = await context.newPage();
  page.on('request', (r) => {
    rec.requests.push(r.url());
    // Live streams never finish; every other request counts until it does.
    if (!r.url().endsWith('/events')) rec.inflight += 1;
  });
  const done = (r) => {
    if (!r.url().endsWith('/events')) rec.inflight -= 1;
  };
  page.on('requestfinished', done);
  page.on('requestfailed', done);
  page.on('response', (r) => rec.responses.push(r));
  page.on('requestfinished', async (r) => {
    const status = (await r.response().catch(() => null))?.status();
    rec.exchanges.push(`${r.method()} ${new URL(r.url()).pathname}${new URL(r.url()).search} -> ${status}`);
  });
  page.on('console', (m) => rec.console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => rec.errors.push(String(e)));
  page.on('dialog', (d) => {
    rec.dialogs.push(`${d.type()}: ${d.message()}`);
    d.dismiss().catch(() => {});
  });
  return { context, page, rec };
}

/** Every request the page made went to the server's own origin (or was a `data:` URL). */
export function checkOwnOrigin(rec) {
  const foreign = rec.requests.filter((u) => !u.startsWith('data:') && new URL(u).origin !== origin);
  check(foreign.length === 0, `requests to other origins: ${foreign.join(', ')}`);
  check(rec.requests.length > 0, 'the recorder saw no request at all');
}

/** No CSP violation was reported, neither as an event nor on the console. */
export async function checkNoViolations(page, rec) {
  const events = await page.evaluate(() => window.__violations);
  check(events.length === 0, `CSP violations: ${events.join('; ')}`);
  const msgs = rec.console.filter((m) => /content security policy/i.test(m));
  check(msgs.length === 0, `CSP complaints on the console: ${msgs.join('; ')}`);
}

/**
 * Logs in with the keyboard only: Tab until the `Name` field has the focus, type, Tab to
 * `Password`, type, Enter.
 */
export async function logInByKeyboard(page, name, password) {
  const focused = () => page.evaluate(() => document.activeElement?.labels?.[0]?.textContent?.trim() ?? '');
  for (let i = 0; i < 10 && (await focused()) !== 'Name'; i++) await page.keyboard.press('Tab');
  check((await focused()) === 'Name', 'Tab never reaches the Name field');
  await page.keyboard.type(name);
  await page.keyboard.press('Tab');
  check((await focused()) === 'Password', 'Tab from Name does not reach Password');
  await page.keyboard.type(password);
  await page.keyboard.press('Enter');
}

/** Every table on the page is named (a <caption> or aria-label). */
export async function checkTablesNamed(page, where) {
  const unnamed = await page.evaluate(() =>
    [...document.querySelectorAll('table')].filter(
      (t) => !(t.caption?.textContent?.trim() || t.getAttribute('aria-label') || t.getAttribute('aria-labelledby')),
    ).length,
  );
  check(unnamed === 0, `${where}: ${unnamed} table(s) without a caption or aria-label`);
}

/** Waits until the page has asked nothing for a while (past the app's 400 ms typing pause). */
export async function settle(rec) {
  await sleep(600);
  await until('the page quiet', async () => rec.inflight === 0);
}

/**
 * On #/run: targets the machine, leaves the field as a keyboard user does (Tab), waits for the
 * page to read what it offers, and picks `action`.
 */
export async function target(page, rec, machineId, action) {
  await page.getByRole('radio', { name: 'Machines', exact: true }).check();
  const ids = page.getByLabel('Machine ids', { exact: true });
  await ids.fill(machineId);
  await ids.press('Tab');
  await settle(rec);
  await page.getByLabel('Action', { exact: true }).selectOption(action);
  await settle(rec);
}

/** Logs in through the form. */
export async function logIn(page, name, password) {
  await page.getByLabel('Name', { exact: true }).fill(name);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await page.getByRole('button', { name: 'Log in', exact: true }).click();
}

/** Logs in as `name` from a fresh load of the console and waits for the machines page. */
export async function logInFresh(page, name) {
  await page.goto(`${env.url}/`);
  await logIn(page, name, env.password);
  await until('on #/machines after login', async () => (await hash(page)) === '#/machines');
  await nav(page).waitFor();
}

export const hash = (page) => page.evaluate(() => location.hash);

/** The main navigation. */
export const nav = (page) => page.getByRole('navigation', { name: 'Main' });

/** Goes to `route` (`#/…`) by the URL, as a bookmark would. */
export async function visit(page, route) {
  await page.goto(`${env.url}/${route}`);
  await page.getByRole('heading', { level: 1 }).first().waitFor();
}

/** The one `<h1>`'s text, once there is exactly one. */
export async function heading(page) {
  const h = page.getByRole('heading', { level: 1 });
  await until('one <h1>', async () => (await h.count()) === 1);
  return (await h.textContent()).trim();
}

/** A `<section>` of the page by its `<h2>`. */
export const section = (page, name) =>
  page.locator('section').filter({ has: page.getByRole('heading', { level: 2, name, exact: true }) });

/** The table row holding a cell with exactly `text`. */
export const rowWithCell = (page, text) =>
  page.getByRole('row').filter({ has: page.getByRole('cell', { name: text, exact: true }) });

/** The machines table's row whose hostname link is `hostname`. */
export const machineRow = (page, hostname) =>
  page.getByRole('row').filter({ has: page.getByRole('link', { name: hostname, exact: true }) });

/** Whether a row's text says `connected` (and not `not connected`). */
export async function saysConnected(row) {
  const t = (await row.innerText()).replace(/\s+/g, ' ');
  return /\bconnected\b/.test(t.replace(/not connected/g, '')) && !/not connected/.test(t);
}

/** The dispatch page's output `<pre>` of `hostname`. */
export const outputOf = (page, hostname) =>
  page.getByRole('region', { name: `Output of ${hostname}`, exact: true }).locator('pre');

/** Screenshots at laptop size, and with `phone` at phone size too; full pages. */
export async function shot(page, name, { phone = false } = {}) {
  fs.mkdirSync(env.shots, { recursive: true });
  await page.screenshot({ path: path.join(env.shots, `${name}-laptop.png`), fullPage: true });
  if (phone) {
    await page.setViewportSize(PHONE);
    await sleep(150);
    // Readable on a phone: one column, only tables scroll sideways (in their own box).
    const wide = await page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
    check(wide <= 1, `${name} is ${wide}px wider than a phone's screen`);
    await page.screenshot({ path: path.join(env.shots, `${name}-phone.png`), fullPage: true });
    await page.setViewportSize(LAPTOP);
    await sleep(100);
  }
}

/** The names of every button and link on the page (for the viewer's checks and the report). */
export async function controls(page) {
  const names = async (role) =>
    Promise.all(
      (await page.getByRole(role).all()).map(async (l) => {
        const label = (await l.getAttribute('aria-label')) ?? (await l.innerText());
        return `${role}:${label.trim().replace(/\s+/g, ' ')}`;
      }),
    );
  return [
    ...(await names('button')),
    ...(await names('link')),
    ...(await names('checkbox')),
  ];
}

/** Whether `secret` (or its random part) is anywhere in the page: markup, field values, storage. */
export async function pageHolds(page, secret) {
  const body = secret.split('_').slice(1).join('_') || secret;
  return page.evaluate(
    ({ secret, body }) => {
      const texts = [document.documentElement.outerHTML];
      for (const el of document.querySelectorAll('input, textarea, select')) texts.push(el.value);
      for (const s of [localStorage, sessionStorage]) {
        for (let i = 0; i < s.length; i++) texts.push(`${s.key(i)}=${s.getItem(s.key(i))}`);
      }
      texts.push(document.cookie);
      return texts.some((t) => t.includes(secret) || t.includes(body));
    },
    { secret, body },
  );
}
