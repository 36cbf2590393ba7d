// Sites: the list with each active enrollment key's fingerprint and which older key versions
// machines still enrolled with; for admins, a form to create a site and, per site, Rotate key,
// whose dialog shows the new key once. The key lives only in that dialog: on Done (or Escape) it
// is removed from the DOM and no reference to it is kept.

import { api, may } from "../api";
import { fill, field, h, uid } from "../dom";
import { plain } from "../output";
import { action, dialog, frame, type Messages, type PageCtx, row, table } from "../ui";
import type { IssuedKey, KeyInfo, Site } from "../types";

interface Usage {
  usage: { version: number; machines: number }[];
}

export async function sitesPage(ctx: PageCtx): Promise<void> {
  const msgs = frame(ctx, "Sites");
  const list = h("div", null, h("p", { class: "loading" }, "Loading sites…"));
  ctx.root.appendChild(list);
  if (may("admin")) ctx.root.appendChild(createForm(msgs, () => void load()));

  async function load(): Promise<void> {
    try {
      const { sites } = await api<{ sites: Site[] }>("GET", "/v1/sites");
      const rows = await Promise.all(sites.map((s) => siteRow(s, msgs, () => void load())));
      if (!ctx.alive()) return;
      const heads = ["Code", "Name", "Company", "Active key", "Older keys in use"];
      if (may("admin")) heads.push("Actions");
      fill(list, table("Sites", heads, rows, "No sites yet."));
    } catch (e) {
      msgs.error(e);
    }
  }
  await load();
}

async function siteRow(s: Site, msgs: Messages, reload: () => void): Promise<HTMLTableRowElement> {
  let key = s.key_version > 0 ? `v${s.key_version}` : "none yet";
  let older = "—";
  // The fingerprint and the usage counts are an admin's to read.
  if (may("admin") && s.key_version > 0) {
    const [info, usage] = await Promise.all([
      api<KeyInfo>("GET", `/v1/sites/${s.id}/enrollment-key`).catch(() => null),
      api<Usage>("GET", `/v1/sites/${s.id}/enrollment-key/usage`).catch(() => null),
    ]);
    if (info) key = info.fingerprint_label;
    if (usage) {
      const old = usage.usage.filter((u) => u.version < s.key_version && u.machines > 0);
      older = old.length
        ? old.map((u) => `v${u.version}: ${u.machines} machine${u.machines === 1 ? "" : "s"}`).join(", ")
        : "none";
    }
  }
  const codeId = uid("site");
  const cells = [
    h("span", { id: codeId }, s.site_code),
    plain(s.display_name),
    plain(s.company) || "—",
    s.key_version > 0 ? h("span", { class: "mono" }, key) : key,
    older,
  ];
  if (may("admin")) {
    const rotate = action("Rotate key", async () => {
      const issued = await api<IssuedKey>("POST", `/v1/sites/${s.id}/enrollment-key/rotate`);
      showKey(s, issued, reload);
    }, msgs, { "aria-describedby": codeId });
    cells.push(rotate);
  }
  return row(...cells);
}

/** The new key, once. Closing the dialog removes it; nothing else ever held it. */
function showKey(s: Site, issued: IssuedKey, reload: () => void): void {
  let key: string | null = issued.key;
  issued.key = "";
  dialog(
    "New enrollment key",
    (body, close) => {
      const code = h("code", { class: "key" }, key ?? "");
      const copied = h("p", { role: "status", class: "ok" });
      const copy = h("button", { type: "button" }, "Copy");
      copy.addEventListener("click", async () => {
        try {
          if (!key) return;
          await navigator.clipboard.writeText(key);
          fill(copied, "Copied to the clipboard.");
        } catch {
          fill(copied, "The browser did not allow copying: select the key and copy it by hand.");
        }
      });
      const done = h("button", { type: "button", class: "primary", onclick: close }, "Done");
      fill(
        body,
        h("p", null, `Site ${s.site_code}, key ${issued.fingerprint_label}. This is the only time the key is shown: copy it now into each host's enrollment key file.`),
        h("div", { class: "key-box" }, code),
        h(
          "p",
          { class: "warning" },
          h("strong", null, issued.version > 1 ? `The old key (v${issued.version - 1}) has stopped working.` : "Any old key of this site has stopped working."),
          " A host that enrolls with it from now on is refused until its key file holds this one; hosts already enrolled keep their own machine keys. Anyone holding this key can enroll a machine at this site until the next rotation.",
        ),
        copied,
        h("div", { class: "buttons" }, copy, done),
      );
      queueMicrotask(() => copy.focus());
    },
    () => {
      // Drop the key from memory and the DOM before the dialog goes.
      key = null;
      reload();
    },
  );
}

function createForm(msgs: Messages, reload: () => void): HTMLElement {
  const code = h("input", { name: "site_code", required: true, maxlength: 64, autocomplete: "off" });
  const name = h("input", { name: "display_name", required: true, maxlength: 128, autocomplete: "off" });
  const company = h("input", { name: "company", maxlength: 128, autocomplete: "organization" });
  const submit = h("button", { type: "submit", class: "primary" }, "Create site");
  const form = h(
    "form",
    { class: "inline-form", "aria-labelledby": "new-site" },
    h("h2", { id: "new-site" }, "New site"),
    h("div", { class: "fields" }, field("Site code", code, "a-z, 0-9, - and _"), field("Name", name), field("Company", company)),
    h("div", { class: "buttons" }, submit),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    submit.disabled = true;
    try {
      const site = await api<Site>("POST", "/v1/sites", { site_code: code.value.trim(), display_name: name.value.trim(), company: company.value.trim() });
      msgs.ok(`Site ${site.site_code} created. Rotate its key to let hosts enroll.`);
      form.reset();
      reload();
    } catch (err) {
      msgs.error(err);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}
