// Scenario `admin`: an admin's whole day in the console. Log in, create a site, rotate its key
// (shown once), have a host enroll with it and see it connected, approve a pending clone, run
// an action and watch its output arrive, cancel a long one, look at the trail, log out (the
// session then works neither in the browser nor on the API).

import {
  ask,
  check,
  checkNoViolations,
  checkOwnOrigin,
  env,
  hash,
  heading,
  log,
  logIn,
  machineRow,
  nav,
  outputOf,
  pageHolds,
  rowWithCell,
  saysConnected,
  secretFile,
  section,
  settle,
  shot,
  target,
  until,
  visit,
} from './lib.mjs';

const SITE = 'lab';
/** The `say` action's secret parameter (its job prints `pin ok` when it arrived). */
const PIN = 'kestrel-9-secret';

export default async function admin(browser, { context, page, rec }) {
  // Not logged in: the login form, and a wrong password is said so.
  await page.goto(`${env.url}/`);
  await page.getByLabel('Name', { exact: true }).waitFor();
  await until('on #/login', async () => (await hash(page)) === '#/login');
  await shot(page, 'login', { phone: true });
  await logIn(page, 'ada', 'not the password at all');
  await until('a login error in role=alert', async () =>
    ((await page.getByRole('alert').first().textContent()) ?? '').trim().length > 0,
  );
  await logIn(page, 'ada', env.password);
  await until('on #/machines after login', async () => (await hash(page)) === '#/machines');
  const main = nav(page);
  for (const link of ['Machines', 'Sites', 'Dispatches', 'Run', 'Trail']) {
    await main.getByRole('link', { name: link, exact: true }).waitFor();
  }
  await main.getByText('ada (admin)').waitFor();
  await main.getByRole('button', { name: 'Log out', exact: true }).waitFor();

  const key = await createSiteAndRotate(context, page);
  const keyFile = secretFile(`enrollment-${SITE}.key`, key);
  const [hostname] = await ask(`need enroll ${SITE} ${keyFile}`);

  // The host, connected.
  await main.getByRole('link', { name: 'Machines', exact: true }).click();
  const row = machineRow(page, hostname);
  await until(`${hostname} shown connected`, async () => {
    if ((await row.count()) === 0 || !(await saysConnected(row))) {
      await page.reload();
      await row.waitFor({ timeout: 3000 }).catch(() => {});
      return false;
    }
    return true;
  });
  const href = await row.getByRole('link', { name: hostname, exact: true }).getAttribute('href');
  const machineId = href.split('/').pop();
  check(/^muid_[0-9a-f]+$/.test(machineId), `the hostname links to ${href}`);
  check((await row.innerText()).includes(SITE), 'the row names the site');
  await shot(page, 'machines', { phone: true });
  // The text filter: a match keeps the row; no match says so in words.
  const search = page.getByLabel('Search', { exact: true });
  await search.fill('console');
  await search.press('Enter');
  await until('the search keeps the row', async () => (await row.count()) === 1);
  await search.fill('nothing-like-this');
  await search.press('Enter');
  await until('an empty search says so in words', async () =>
    (await row.count()) === 0 && /no machines/i.test(await page.locator('body').innerText()),
  );
  await search.fill('');
  await search.press('Enter');
  await row.waitFor();
  for (const f of ['Site', 'State', 'Connection']) {
    const tag = await page.getByLabel(f, { exact: true }).evaluate((e) => e.tagName);
    check(tag === 'SELECT', `the ${f} filter is a select`);
  }
  await page.getByRole('checkbox', { name: `Select ${hostname}`, exact: true }).waitFor();
  await page.getByRole('button', { name: 'Remove selected', exact: true }).waitFor();

  const linked = await approveClone(page, hostname, machineId);
  await machinePage(page, linked, machineId);
  await runQuick(page, rec, linked, machineId);
  await runAndCancel(page, rec, linked, machineId);

  await main.getByRole('link', { name: 'Trail', exact: true }).click();
  check((await heading(page)).length > 0, 'the trail has a heading');
  await page.getByLabel('Kind').waitFor();
  await page.getByRole('button', { name: 'Older', exact: true }).waitFor();
  await page.getByRole('button', { name: 'Newer', exact: true }).waitFor();
  const events = page.getByRole('table').getByRole('row');
  await until('trail rows', async () => (await events.count()) > 3);
  await shot(page, 'trail', { phone: true });
  const kind = page.getByLabel('Kind', { exact: true });
  await kind.fill('dispatch.cancel');
  await kind.press('Enter');
  await until('only dispatch.cancel events', async () => {
    const rows = (await events.allInnerTexts()).slice(1);
    return rows.length === 1 && rows[0].includes('dispatch.cancel');
  });

  await removeBulk(page, linked, machineId);

  checkOwnOrigin(rec);
  await checkNoViolations(page, rec);
  await logOut(context, page);
}

/** Creates site `lab` through the form and rotates its key: the key, shown exactly once. */
async function createSiteAndRotate(context, page) {
  await nav(page).getByRole('link', { name: 'Sites', exact: true }).click();
  await page.getByLabel('Site code', { exact: true }).fill(SITE);
  await page.getByLabel('Name', { exact: true }).fill('Laboratory');
  await page.getByLabel('Company', { exact: true }).fill('Acme');
  await page.getByRole('button', { name: 'Create site', exact: true }).click();
  const row = rowWithCell(page, SITE);
  await row.waitFor();
  check((await row.innerText()).includes('Laboratory'), 'the new row shows the name');

  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: env.url });
  await row.getByRole('button', { name: 'Rotate key', exact: true }).click();
  const dialog = page.getByRole('dialog', { name: 'New enrollment key', exact: true });
  await dialog.waitFor();
  const key = ((await dialog.locator('code').first().textContent()) ?? '').trim();
  check(/^wek_[0-9a-f]{64}$/.test(key), 'the dialog shows an enrollment key (wek_ + 64 hex)');
  check(/old/i.test(await dialog.innerText()), 'the dialog warns that the old key stops working');
  await dialog.getByRole('button', { name: 'Copy', exact: true }).click();
  await until('the key on the clipboard', async () =>
    (await page.evaluate(() => navigator.clipboard.readText())) === key,
  );
  await shot(page, 'sites-key-dialog', { phone: true });
  await dialog.getByRole('button', { name: 'Done', exact: true }).click();
  await dialog.waitFor({ state: 'hidden' });
  check(!(await pageHolds(page, key)), 'after Done the key is still in the page or storage');
  await until('the new fingerprint v1 (…)', async () => /v1 \(\S+\)/.test(await row.innerText()));

  // Never again: not after a reload, not anywhere in the app.
  await page.reload();
  await rowWithCell(page, SITE).waitFor();
  check(!(await pageHolds(page, key)), 'after a reload the key is in the page');
  check((await page.getByRole('dialog').count()) === 0, 'a dialog is open after the reload');
  await shot(page, 'sites', { phone: true });
  return key;
}

/** Has the harness make a clone (same hardware) enroll, approves it, waits for its link. */
async function approveClone(page, hostname, machineId) {
  await ask(`need clone ${hostname}`);
  await page.getByLabel('State', { exact: true }).selectOption('pending');
  const row = machineRow(page, hostname);
  await until(`${hostname} listed as pending`, async () => {
    if ((await row.count()) > 0 && /pending/.test(await row.innerText())) return true;
    await page.getByLabel('State', { exact: true }).selectOption('active');
    await page.getByLabel('State', { exact: true }).selectOption('pending');
    return false;
  });
  await shot(page, 'machines-pending');
  await row.getByRole('button', { name: 'Approve', exact: true }).click();
  const [linked] = await ask(`need clone-linked ${machineId}`);
  await page.getByLabel('State', { exact: true }).selectOption('any');
  log(`the clone ${linked} now holds ${machineId}`);
  return linked;
}

/** The machine's page: what the host offers, its link state, the admin's buttons. */
async function machinePage(page, hostname, machineId) {
  await visit(page, `#/machines/${machineId}`);
  await until(`the page of ${hostname}`, async () => {
    if ((await heading(page)) === hostname && (await saysConnected(page.locator('body')))) {
      return true;
    }
    await page.reload();
    return false;
  });
  for (const s of ['Labels', 'Keys', 'Actions', 'Recent dispatches']) {
    await section(page, s).waitFor();
  }
  // The sections fill in as their requests answer ("Loading…" until then).
  await until('the Actions section lists say, linger and shout', async () => {
    const actions = await section(page, 'Actions').innerText();
    return ['say', 'linger', 'shout'].every((a) => actions.includes(a));
  });
  for (const b of ['Ban', 'Quarantine', 'Remove']) {
    await page.getByRole('button', { name: b, exact: true }).waitFor();
  }
  await shot(page, 'machine', { phone: true });
}

/** Picks the action and fills the `say` form. */
async function fillSay(page) {
  await page.getByLabel('Action', { exact: true }).selectOption('say');
  const times = page.getByLabel('times', { exact: true });
  await times.waitFor();
  check((await times.getAttribute('type')) === 'number', 'int parameter is a number input');
  check((await times.getAttribute('min')) === '1', 'int parameter has min=1');
  check((await times.getAttribute('max')) === '3', 'int parameter has max=3');
  await times.fill('2');
  await page.getByLabel('word', { exact: true }).fill('hello');
  const tone = page.getByLabel('tone', { exact: true });
  check((await tone.evaluate((e) => e.tagName)) === 'SELECT', 'enum parameter is a select');
  await tone.selectOption('loud');
  const loudly = page.getByLabel('loudly', { exact: true });
  check((await loudly.getAttribute('type')) === 'checkbox', 'bool parameter is a checkbox');
  await loudly.check();
  const pin = page.getByLabel('pin', { exact: true });
  check((await pin.getAttribute('type')) === 'password', 'secret parameter is a password field');
  await pin.fill(PIN);
}

/** Waits for the dispatch page the Run button leads to; its id. */
async function dispatchPage(page) {
  const h = await until('on a dispatch page', async () => {
    const m = /^#\/dispatches\/(dsp_\S+)$/.exec(await hash(page));
    return m?.[1];
  });
  check((await heading(page)) === h, 'the dispatch page is headed by its id');
  return h;
}

/** Runs `say` from the machine's page and watches its output arrive. */
async function runQuick(page, rec, hostname, machineId) {
  await page.getByRole('link', { name: 'Run an action', exact: true }).click();
  await until('on #/run', async () => (await hash(page)).startsWith('#/run'));
  const ids = page.getByLabel('Machine ids', { exact: true });
  await until('the machine preselected', async () => (await ids.inputValue()).includes(machineId));
  await settle(rec);
  await fillSay(page);
  await settle(rec);
  await shot(page, 'run', { phone: true });
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  const id = await dispatchPage(page);
  const out = outputOf(page, hostname);
  await until('the output of say', async () =>
    (await out.textContent()).includes('said hello, loud, 2 times, loudly=true'),
  );
  const row = page.getByRole('row').filter({ hasText: hostname });
  await until('the host succeeded', async () => /succeeded/.test(await row.innerText()));
  check((await row.locator('progress').count()) === 1, 'the host row has a <progress>');
  await until('the job read the secret', async () => (await out.textContent()).includes('pin ok'));
  check(!(await pageHolds(page, PIN)), 'the secret parameter is shown on the dispatch page');
  log(`dispatch ${id} ran say on ${hostname}`);
  await shot(page, 'dispatch', { phone: true });
}

/** Runs `linger` from the Run page, sees it running with output, cancels it. */
async function runAndCancel(page, rec, hostname, machineId) {
  await nav(page).getByRole('link', { name: 'Run', exact: true }).click();
  await target(page, rec, machineId, 'linger');
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  const id = await dispatchPage(page);
  const out = outputOf(page, hostname);
  const row = page.getByRole('row').filter({ hasText: hostname });
  // Output that arrives while the job still runs: the page follows the live stream.
  await until('linger running with its first line shown', async () =>
    (await out.textContent()).includes('lingering') && /running/.test(await row.innerText()),
  );
  await shot(page, 'dispatch-running');
  await page.getByRole('button', { name: 'Cancel dispatch', exact: true }).click();
  await until('the host cancelled', async () => /cancelled/.test(await row.innerText()), 20_000);
  await until('Cancel dispatch gone', async () =>
    (await page.getByRole('button', { name: 'Cancel dispatch', exact: true }).count()) === 0,
  );
  check(!(await out.textContent()).includes('finished'), 'linger ran to its end');
  await ask(`check cancelled ${id} ${machineId}`);
}

/** Removes the machine as a selection of one: confirmed in a dialog, a result per machine. */
async function removeBulk(page, hostname, machineId) {
  await nav(page).getByRole('link', { name: 'Machines', exact: true }).click();
  await page.getByRole('checkbox', { name: `Select ${hostname}`, exact: true }).check();
  // The button counts the selection: "Remove selected (1)".
  await page.getByRole('button', { name: /^Remove selected/ }).click();
  const dialog = page.getByRole('dialog');
  await dialog.waitFor();
  check((await dialog.innerText()).includes(hostname), 'the confirmation names the machine');
  await shot(page, 'machines-remove-dialog');
  await dialog.getByRole('button', { name: 'Remove', exact: true }).click();
  const result = section(page, 'Removal results').getByRole('row').filter({ hasText: hostname });
  await until('a result for the machine', async () => /removed/.test(await result.innerText()));
  await shot(page, 'machines-removed');
  await ask(`check removed ${machineId}`);
}

/** Logs out; the session's cookie and token are dead in the browser and on the API. */
async function logOut(context, page) {
  const cookie = (await context.cookies(env.url)).find((c) => c.name === 'warden_session');
  check(cookie, 'no warden_session cookie after login');
  check(cookie.httpOnly && cookie.secure && cookie.sameSite === 'Strict' && cookie.path === '/',
    `the session cookie's flags: httpOnly=${cookie.httpOnly} secure=${cookie.secure} sameSite=${cookie.sameSite} path=${cookie.path}`);
  check(!(await page.evaluate(() => document.cookie)).includes('warden_session'), 'script sees the cookie');
  check(!(await pageHolds(page, cookie.value)), 'the session token is in the page or storage');
  const tokenFile = secretFile('session.token', cookie.value);
  await ask(`check session-live ${tokenFile}`);

  await nav(page).getByRole('button', { name: 'Log out', exact: true }).click();
  await page.getByLabel('Password', { exact: true }).waitFor();
  const after = (await context.cookies(env.url)).filter((c) => c.name === 'warden_session' && c.value);
  check(after.length === 0, 'the cookie is still set after logout');
  await visit(page, '#/machines');
  await page.getByLabel('Password', { exact: true }).waitFor();
  check((await page.getByRole('table').count()) === 0, 'a table shows after logout');
  // The old cookie itself is dead, not merely forgotten by the browser.
  await context.addCookies([{ ...cookie }]);
  const status = await page.evaluate(async () => (await fetch('/v1/session')).status);
  check(status === 401, `GET /v1/session with the old cookie: ${status}`);
  await ask(`check session-dead ${tokenFile}`);
}
