// Scenario `viewer`: a viewer reads machines, sites and dispatches and sees no control that
// changes anything; forced through the API with the viewer's own session and CSRF token, a
// change is refused 403 (by role, not for want of the CSRF token), and nothing changed.

import {
  ask,
  check,
  controls,
  env,
  hash,
  heading,
  log,
  logInByKeyboard,
  machineRow,
  nav,
  rowWithCell,
  section,
  shot,
  until,
  visit,
} from './lib.mjs';

/** Names of controls that change something, from the UI contract. */
const CHANGES = [
  'button:Approve',
  'button:Ban',
  'button:Unban',
  'button:Quarantine',
  'button:Clear',
  'button:Remove',
  'button:Remove selected',
  'button:Create site',
  'button:Rotate key',
  'button:Run',
  'button:Cancel dispatch',
  'link:Run an action',
  'link:Run',
  'link:Trail',
];

/** Fails when the page offers any control that changes something. */
async function noChanges(page, where) {
  const found = await controls(page);
  const bad = found.filter((c) => CHANGES.includes(c) || /^checkbox:Select /.test(c));
  check(bad.length === 0, `the viewer is offered on ${where}: ${bad.join(', ')}`);
  for (const field of ['Site code', 'Company']) {
    check((await page.getByLabel(field, { exact: true }).count()) === 0, `${where} has a ${field} field`);
  }
  log(`viewer on ${where}: ${found.join(', ')}`);
}

export default async function viewer(browser, { page }) {
  const { machine, hostname, running, done } = env;
  // The viewer logs in with the keyboard alone.
  await page.goto(`${env.url}/`);
  await page.getByLabel('Name', { exact: true }).waitFor();
  await logInByKeyboard(page, 'vera', env.password);
  await until('on #/machines after login', async () => (await hash(page)) === '#/machines');
  await nav(page).getByText('vera (viewer)').waitFor();

  // Each page shows what it should (so "no buttons" is not an empty page) and no control.
  await machineRow(page, hostname).waitFor();
  await noChanges(page, '#/machines');
  await shot(page, 'viewer-machines');

  await visit(page, `#/machines/${machine}`);
  await until(`the page of ${hostname}`, async () => (await heading(page)) === hostname);
  await section(page, 'Actions').getByText('linger').first().waitFor();
  await noChanges(page, 'the machine page');

  await visit(page, '#/sites');
  await rowWithCell(page, 'hq').waitFor();
  await noChanges(page, '#/sites');

  await visit(page, '#/dispatches');
  await page.getByText(running).first().waitFor();
  await noChanges(page, '#/dispatches');

  await visit(page, `#/dispatches/${running}`);
  check((await heading(page)) === running, 'the running dispatch page is headed by its id');
  const row = page.getByRole('row').filter({ hasText: hostname });
  await until('the host shown running', async () => /running/.test(await row.innerText()));
  await noChanges(page, 'a running dispatch');
  await shot(page, 'viewer-dispatch');

  await visit(page, `#/dispatches/${done}`);
  check((await heading(page)) === done, 'the done dispatch page is headed by its id');
  await noChanges(page, 'a finished dispatch');

  // The run page by its address: nothing to run with.
  await visit(page, '#/run');
  await noChanges(page, '#/run');

  // Forced: the viewer's own session and CSRF token, from inside the page.
  const forced = await page.evaluate(
    async ({ machine, running }) => {
      const session = await (await fetch('/v1/session')).json();
      const post = async (path, body) => {
        const r = await fetch(path, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-csrf-token': session.csrf },
          body: JSON.stringify(body),
        });
        return { path, status: r.status, body: await r.json().catch(() => null) };
      };
      return {
        session,
        answers: [
          await post('/v1/dispatches', { target: { machines: [machine] }, action: 'linger' }),
          await post(`/v1/dispatches/${running}/cancel`, {}),
          await post('/v1/sites', { site_code: 'evil', display_name: 'Evil' }),
          await post(`/v1/machines/${machine}/ban`, {}),
          await post('/v1/machines/bulk-remove', { ids: [machine] }),
        ],
      };
    },
    { machine, running },
  );
  check(forced.session.role === 'viewer', `GET /v1/session says role ${forced.session.role}`);
  check(typeof forced.session.csrf === 'string' && forced.session.csrf.length > 0, 'no CSRF token');
  for (const a of forced.answers) {
    check(a.status === 403, `viewer POST ${a.path}: ${a.status} ${JSON.stringify(a.body)}`);
    check(a.body?.error?.kind === 'forbidden', `viewer POST ${a.path}: ${JSON.stringify(a.body)}`);
    check(!/csrf/i.test(a.body?.error?.message ?? ''), `viewer POST ${a.path} failed on CSRF, not role`);
  }
  await ask(`check unchanged ${machine} ${running}`);
}
