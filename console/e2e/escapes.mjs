// Scenario `escapes`: an operator runs `shout`, whose output holds markup
// (`<script>alert(1)</script>`, `<img src=x onerror=alert(2)>`) and terminal escapes
// (`ESC[31mred ESC[0m`). The dispatch page shows them as text: the literal markup in the
// `<pre>`'s text, the escape bytes made visible, no element made from the output, no script
// run, no dialog.

import { check, env, heading, logInFresh, nav, outputOf, shot, until } from './lib.mjs';

export default async function escapes(browser, { page, rec }) {
  const { machine, hostname } = env;
  await logInFresh(page, 'olga');
  await nav(page).getByText('olga (operator)').waitFor();
  await nav(page).getByRole('link', { name: 'Run', exact: true }).click();
  // Straight from typing the machine id to a click on Run, as a mouse user goes.
  await page.getByRole('radio', { name: 'Machines', exact: true }).check();
  await page.getByLabel('Machine ids', { exact: true }).fill(machine);
  await page.getByLabel('Action', { exact: true }).selectOption('shout');
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  const id = await until('on a dispatch page', async () =>
    /^#\/dispatches\/(dsp_\S+)$/.exec(await page.evaluate(() => location.hash))?.[1],
  );
  check((await heading(page)) === id, 'the dispatch page is headed by its id');
  const pre = outputOf(page, hostname);
  await until('the whole output shown', async () => (await pre.textContent()).includes('plain'));
  const row = page.getByRole('row').filter({ hasText: hostname });
  await until('the host succeeded', async () => /succeeded/.test(await row.innerText()));
  await until('no Cancel dispatch once it is done', async () =>
    (await page.getByRole('button', { name: 'Cancel dispatch', exact: true }).count()) === 0,
  );
  await shot(page, 'dispatch-escapes', { phone: true });

  const text = await pre.textContent();
  check(text.includes('<script>alert(1)</script>'), `the <pre> lacks the literal <script>: ${JSON.stringify(text)}`);
  check(text.includes('<img src=x onerror=alert(2)>'), `the <pre> lacks the literal <img>: ${JSON.stringify(text)}`);
  check(!text.includes('\u001b'), 'a raw ESC byte is in the <pre>: escapes must be shown visibly');
  // ESC shown as a visible character (the contract's example is ␛), the rest as it is.
  check(/[^\s\u0000-\u001f\u007f]\[31mred/.test(text), `ESC is not shown visibly: ${JSON.stringify(text)}`);
  check(text.includes('␛[31mred␛[0m plain'), `ESC is not shown as ␛: ${JSON.stringify(text)}`);
  const dom = await page.evaluate((o) => {
    const pres = [...document.querySelectorAll('pre')];
    return {
      inPre: pres.flatMap((p) => [...p.querySelectorAll('*')].map((e) => e.tagName)),
      scripts: [...document.scripts].map((s) => s.src || `inline:${s.textContent.slice(0, 40)}`),
      imgs: [...document.images].map((i) => i.getAttribute('src')),
      foreign: [...document.scripts].filter((s) => s.src !== `${o}/assets/app.js`).length,
    };
  }, new URL(env.url).origin);
  check(!dom.inPre.some((t) => ['SCRIPT', 'IMG'].includes(t)), `elements made from output: ${dom.inPre}`);
  check(dom.foreign === 0, `scripts other than /assets/app.js: ${dom.scripts.join(', ')}`);
  check(!dom.imgs.includes('x'), 'an <img src=x> was made from the output');
  check(rec.dialogs.length === 0, `dialogs fired: ${rec.dialogs.join('; ')}`);
}
