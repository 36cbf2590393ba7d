// Run an action: targets (machine ids, a site, or labels), an action the targets offer, and a
// form for its parameters generated from the types the hosts reported (enum → select, int →
// number with its bounds, bool → checkbox, path and string → text, secret → password field,
// never shown again), the batch and failure brakes, and the confirmation above 100 targets.
// The actions on offer are read from up to SAMPLE of the target machines.

import { api, ApiError, query } from "../api";
import { checkbox, fill, field, h, uid } from "../dom";
import { plain } from "../output";
import { go } from "../route";
import { frame, type PageCtx } from "../ui";
import type { Dispatch, Machine, MachineActions, Param, RemoteAction, Site } from "../types";

/** Target machines whose reported actions are read to fill the Action list. */
const SAMPLE = 20;
/** Machines scanned for a label target (the list has no label filter). */
const LABEL_SCAN = 500;
/** Above this many targets the server asks for `confirm`. */
const CONFIRM_ABOVE = 100;

/** A parameter's rules in words. */
function describeParam(p: Param): string {
  const secret = p.secret ? "; secret: sent to the hosts, never stored or shown" : "";
  switch (p.type) {
    case "enum":
      return `one of ${p.values.join(", ")}${secret}`;
    case "int": {
      const lo = p.min !== undefined && Number.isSafeInteger(p.min) ? p.min : null;
      const hi = p.max !== undefined && Number.isSafeInteger(p.max) ? p.max : null;
      const range = lo !== null && hi !== null ? ` from ${lo} to ${hi}` : lo !== null ? ` of at least ${lo}` : hi !== null ? ` of at most ${hi}` : "";
      return `a whole number${range}${secret}`;
    }
    case "bool":
      return `yes or no${secret}`;
    case "path":
      return `a path${p.under?.length ? ` under ${p.under.join(" or ")}` : ""}${p.must_exist ? " that exists" : ""}${secret}`;
    default:
      return `text${p.max_len ? ` of at most ${p.max_len} characters` : ""}${p.pattern ? ` matching ${p.pattern}` : ""}${secret}`;
  }
}

/** An action's parameters in one line, for the machine page. */
export function paramSummary(a: RemoteAction): string {
  return Object.entries(a.params)
    .map(([n, p]) => `${n}: ${describeParam(p)}`)
    .join(" · ");
}

/** A parameter's input, and how to read its value for the request. */
interface ParamInput {
  wrap: HTMLElement;
  control: HTMLInputElement | HTMLSelectElement;
  read(): unknown;
}

function paramInput(name: string, p: Param): ParamInput {
  const hint = describeParam(p);
  if (p.type === "bool") {
    const { wrap, box } = checkbox(name);
    wrap.appendChild(h("span", { class: "hint" }, hint));
    return { wrap, control: box, read: () => box.checked };
  }
  if (p.type === "enum" && !p.secret) {
    const sel = h("select", { required: true }, p.values.map((v) => h("option", { value: v }, v)));
    return { wrap: field(name, sel, hint), control: sel, read: () => sel.value };
  }
  const input = h("input", { autocomplete: "off", spellcheck: "false", required: true });
  if (p.secret) input.type = "password";
  if (p.type === "int") {
    if (!p.secret) {
      input.type = "number";
      input.step = "1";
      if (p.min !== undefined && Number.isSafeInteger(p.min)) input.min = String(p.min);
      if (p.max !== undefined && Number.isSafeInteger(p.max)) input.max = String(p.max);
    }
    input.inputMode = "numeric";
    return {
      wrap: field(name, input, hint),
      control: input,
      read: () => {
        const v = input.value.trim();
        if (!/^-?\d+$/.test(v)) throw new Error(`${name} must be a whole number.`);
        return Number(v);
      },
    };
  }
  if (p.type === "string" && p.max_len) input.maxLength = p.max_len;
  return { wrap: field(name, input, hint), control: input, read: () => input.value };
}

export async function runPage(ctx: PageCtx): Promise<void> {
  const msgs = frame(ctx, "Run an action");
  const group = uid("kind");
  const radio = (value: string, label: string) => {
    const r = h("input", { type: "radio", name: group, value, id: uid("r") });
    return { r, el: h("div", { class: "check" }, r, h("label", { for: r.id }, label)) };
  };
  const kinds = { machines: radio("machines", "Machines"), site: radio("site", "Site"), labels: radio("labels", "Labels") };
  const ids = h("textarea", { rows: 4, spellcheck: "false", autocomplete: "off" });
  const site = h("select", null);
  const labels = h("textarea", { rows: 3, spellcheck: "false", autocomplete: "off", placeholder: "department=it" });
  const targetFields = {
    machines: field("Machine ids", ids, "one muid_… per line"),
    site: field("Site", site),
    labels: field("Labels", labels, "key=value, one per line; every one must hold"),
  };
  const actionSel = h("select", { required: true });
  const actionInfo = h("p", { class: "hint", "aria-live": "polite" });
  const paramBox = h("div", { class: "params" });
  const batch = h("input", { type: "number", min: 1, max: 10000, step: 1, value: "100", inputmode: "numeric" });
  const maxFailures = h("input", { type: "number", min: 0, step: 1, inputmode: "numeric" });
  const canary = h("input", { type: "number", min: 0, step: 1, value: "0", inputmode: "numeric" });
  const confirm = checkbox("Confirm");
  confirm.wrap.appendChild(h("span", { class: "hint" }, `required when the dispatch reaches more than ${CONFIRM_ABOVE} machines`));
  const submit = h("button", { type: "submit", class: "primary" }, "Run");

  const form = h(
    "form",
    { class: "run", novalidate: true },
    h(
      "fieldset",
      null,
      h("legend", null, "Targets"),
      h("div", { class: "radios" }, kinds.machines.el, kinds.site.el, kinds.labels.el),
      targetFields.machines,
      targetFields.site,
      targetFields.labels,
    ),
    h("fieldset", null, h("legend", null, "Action"), field("Action", actionSel), actionInfo, paramBox),
    h(
      "fieldset",
      null,
      h("legend", null, "Brakes"),
      h(
        "div",
        { class: "fields" },
        field("Batch size", batch, "hosts running at once"),
        field("Max failures", maxFailures, "stop starting hosts past this many failures; empty: no limit"),
        field("Canary", canary, "hosts that run first, alone"),
      ),
      confirm.wrap,
    ),
    h("div", { class: "buttons" }, submit),
  );
  ctx.root.appendChild(form);

  let offered = new Map<string, { action: RemoteAction; hosts: number }>();
  let looked = 0;
  let inputs = new Map<string, ParamInput>();

  function kind(): "machines" | "site" | "labels" {
    return kinds.site.r.checked ? "site" : kinds.labels.r.checked ? "labels" : "machines";
  }
  function showTarget(): void {
    for (const [k, el] of Object.entries(targetFields)) el.hidden = k !== kind();
  }
  function idList(): string[] {
    return ids.value.split(/[\s,]+/).filter(Boolean);
  }
  function labelMap(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const line of labels.value.split("\n")) {
      const t = line.trim();
      if (!t) continue;
      const eq = t.indexOf("=");
      if (eq <= 0) throw new Error(`"${t}" is not a key=value label.`);
      out[t.slice(0, eq).trim()] = t.slice(eq + 1).trim();
    }
    return out;
  }

  /** Some of the target machines, to read what they offer. */
  async function sampleIds(): Promise<string[]> {
    switch (kind()) {
      case "machines":
        return idList().slice(0, SAMPLE);
      case "site": {
        if (!site.value) return [];
        const r = await api<{ machines: Machine[] }>("GET", `/v1/machines${query({ site: site.value, state: "active", limit: SAMPLE })}`);
        return r.machines.map((m) => m.machine_id);
      }
      case "labels": {
        const want = Object.entries(labelMap());
        if (!want.length) return [];
        const r = await api<{ machines: Machine[] }>("GET", `/v1/machines${query({ state: "active", limit: LABEL_SCAN })}`);
        const holds = (m: Machine) =>
          want.every(([k, v]) => {
            const got = m.labels?.[k];
            return Array.isArray(got) ? got.includes(v) : got === v;
          });
        return r.machines.filter(holds).slice(0, SAMPLE).map((m) => m.machine_id);
      }
    }
  }

  let sampling = 0;
  /** The targets the offer was last read for: the same targets are not read again (a blur
   * after typing would otherwise redraw the form under the pointer on its way to Run). */
  let readFor = "";
  async function refreshActions(): Promise<void> {
    const key = `${kind()}\n${kind() === "machines" ? idList().join(" ") : kind() === "site" ? site.value : labels.value.trim()}`;
    if (key === readFor) return;
    readFor = key;
    const mine = ++sampling;
    if (!offered.size) fill(actionInfo, "Reading what the targets offer…");
    let sample: string[];
    try {
      sample = await sampleIds();
    } catch (e) {
      readFor = "";
      if (mine === sampling) fill(actionInfo, e instanceof Error ? e.message : String(e));
      return;
    }
    const answers = await Promise.allSettled(sample.map((id) => api<MachineActions>("GET", `/v1/machines/${encodeURIComponent(id)}/actions`)));
    if (mine !== sampling || !ctx.alive()) return;
    const next = new Map<string, { action: RemoteAction; hosts: number }>();
    for (const a of answers) {
      if (a.status !== "fulfilled" || !a.value.actions) continue;
      for (const x of a.value.actions) {
        const seen = next.get(x.name);
        if (seen) seen.hosts += 1;
        else next.set(x.name, { action: x, hosts: 1 });
      }
    }
    offered = next;
    looked = sample.length;
    const before = actionSel.value;
    const names = [...offered.keys()].sort();
    fill(
      actionSel,
      names.length ? h("option", { value: "" }, "Choose an action") : h("option", { value: "" }, "No action on offer"),
      names.map((n) => h("option", { value: n }, plain(n))),
    );
    actionSel.value = names.includes(before) ? before : names.length === 1 ? (names[0] ?? "") : "";
    showAction();
  }

  /** The action and parameter types the inputs were made for: typed values survive a new
   * look at the targets that offers the same action with the same parameters. */
  let shown = "";
  function showAction(): void {
    const o = offered.get(actionSel.value);
    const spec = o ? JSON.stringify([o.action.name, o.action.params]) : "";
    const keep = spec !== "" && spec === shown;
    shown = spec;
    if (!keep) inputs = new Map();
    if (!o) {
      fill(paramBox);
      fill(
        actionInfo,
        looked === 0
          ? "Name the targets to see the actions they offer."
          : offered.size
            ? `${offered.size} action${offered.size === 1 ? "" : "s"} offered by the ${looked} target machine${looked === 1 ? "" : "s"} looked at.`
            : `None of the ${looked} target machine${looked === 1 ? "" : "s"} looked at has reported an action it offers.`,
      );
      return;
    }
    fill(
      actionInfo,
      o.action.description ? h("span", { class: "description" }, plain(o.action.description)) : null,
      `Tier ${o.action.tier}; offered by ${o.hosts} of the ${looked} target machine${looked === 1 ? "" : "s"} looked at (a host that does not offer it refuses it).`,
    );
    if (keep) return;
    const fields = Object.entries(o.action.params).map(([name, p]) => {
      const input = paramInput(name, p);
      inputs.set(name, input);
      return input.wrap;
    });
    fill(paramBox, fields.length ? h("div", { class: "fields" }, fields) : h("p", { class: "hint" }, "This action takes no parameters."));
  }

  for (const k of Object.values(kinds)) {
    k.r.addEventListener("change", () => {
      showTarget();
      void refreshActions();
    });
  }
  for (const el of [ids, site, labels]) el.addEventListener("change", () => void refreshActions());
  // Typing in a target field reads the offer again once the typing pauses.
  let typing = 0;
  for (const el of [ids, labels]) {
    el.addEventListener("input", () => {
      clearTimeout(typing);
      typing = window.setTimeout(() => void refreshActions(), 400);
    });
  }
  ctx.onLeave(() => clearTimeout(typing));
  actionSel.addEventListener("change", showAction);

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    msgs.clear();
    let body: Record<string, unknown>;
    try {
      const k = kind();
      const target =
        k === "machines" ? { machines: idList() } : k === "site" ? { site: site.value } : { labels: labelMap() };
      if (k === "machines" && !idList().length) throw new Error("Name at least one machine id.");
      if (k === "site" && !site.value) throw new Error("Choose a site.");
      if (k === "labels" && !Object.keys(labelMap()).length) throw new Error("Give at least one key=value label.");
      if (!actionSel.value) throw new Error("Choose an action.");
      if (k === "machines" && idList().length > CONFIRM_ABOVE && !confirm.box.checked) {
        throw new Error(`Tick Confirm to run on more than ${CONFIRM_ABOVE} machines.`);
      }
      const params: Record<string, unknown> = {};
      for (const [name, input] of inputs) params[name] = input.read();
      const num = (el: HTMLInputElement, what: string): number | undefined => {
        const v = el.value.trim();
        if (v === "") return undefined;
        if (!/^\d+$/.test(v)) throw new Error(`${what} must be a whole number of 0 or more.`);
        return Number(v);
      };
      body = {
        target,
        action: actionSel.value,
        params,
        batch: num(batch, "Batch size"),
        max_failures: num(maxFailures, "Max failures"),
        canary: num(canary, "Canary"),
        confirm: confirm.box.checked,
      };
    } catch (err) {
      msgs.error(err);
      return;
    }
    submit.disabled = true;
    try {
      const res = await api<{ dispatch: Dispatch }>("POST", "/v1/dispatches", body);
      // The secrets were sent; they are not kept in the page.
      for (const input of inputs.values()) if (input.control instanceof HTMLInputElement && input.control.type === "password") input.control.value = "";
      go(`#/dispatches/${res.dispatch.dispatch_id}`);
    } catch (err) {
      // The server counts the targets; above 100 it asks for the confirmation.
      if (err instanceof ApiError && err.status === 400 && /"confirm"/.test(err.message) && !confirm.box.checked) {
        msgs.error(`${err.message}. Tick Confirm to run it on all of them.`);
        confirm.box.focus();
      } else msgs.error(err);
    } finally {
      submit.disabled = false;
    }
  });

  const pre = ctx.params.get("machine");
  if (pre) ids.value = pre;
  kinds.machines.r.checked = true;
  showTarget();
  try {
    const { sites } = await api<{ sites: Site[] }>("GET", "/v1/sites");
    fill(site, h("option", { value: "" }, "Choose a site"), sites.map((s) => h("option", { value: s.site_code }, `${s.site_code} (${plain(s.display_name)})`)));
  } catch (e) {
    msgs.error(e);
  }
  await refreshActions();
}
