// One machine: its link state, labels, keys (metadata only), the actions its host offers the
// fleet, and the dispatches it was part of; admin buttons for what applies to its state
// (destructive ones confirmed first), and for operators a link to run an action on it.

import { api, may, query } from "../api";
import { fill, h, uid, when } from "../dom";
import { plain } from "../output";
import { go } from "../route";
import { action, confirmAction, flashNext, frame, type Messages, type PageCtx, row, table } from "../ui";
import type { Dispatch, Labels, Machine, MachineActions, MachineKey, RemoteAction } from "../types";
import { stateOf } from "./machines";
import { paramSummary } from "./run";

export async function machinePage(ctx: PageCtx): Promise<void> {
  const id = ctx.arg;
  const path = `/v1/machines/${encodeURIComponent(id)}`;
  document.title = "Machine · warden";
  fill(ctx.root, h("p", { class: "loading" }, "Loading the machine…"));
  let m: Machine;
  try {
    m = await api<Machine>("GET", path);
  } catch (e) {
    if (!ctx.alive()) return;
    const msgs = frame(ctx, "Machine not found");
    msgs.error(e);
    return;
  }
  if (!ctx.alive()) return;
  const link = h("p", { class: m.connected ? "up link-state" : "down link-state" }, m.connected ? "connected" : "not connected");
  const msgs = frame(ctx, plain(m.hostname), link);

  const facts: [string, Node | string][] = [
    ["Machine id", h("span", { class: "mono" }, m.machine_id)],
    ["Site", m.site_code],
    ["State", stateOf(m)],
    ["Machine key", m.machine_key_version ? `v${m.machine_key_version}` : "—"],
    ["Enrolled with site key", `v${m.key_version}`],
    ["Agent version", m.agent_version ? plain(m.agent_version) : "—"],
    ["Linked since", m.connected ? when(m.linked_ms) : "—"],
    ["Last seen", when(m.last_seen_ms)],
    ["Enrolled", when(m.created_ms)],
  ];
  ctx.root.append(
    h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", null, k), h("dd", null, v)])),
    buttons(m, path, msgs, (done) => {
      flashNext(done);
      go(location.hash);
    }),
  );

  const sections = {
    labels: section("Labels", labels(m.labels)),
    keys: section("Keys", h("p", { class: "loading" }, "Loading…")),
    actions: section("Actions", h("p", { class: "loading" }, "Loading…")),
    dispatches: section("Recent dispatches", h("p", { class: "loading" }, "Loading…")),
  };
  ctx.root.append(sections.labels.el, sections.keys.el, sections.actions.el, sections.dispatches.el);

  const [keys, actions, dispatches] = await Promise.allSettled([
    api<{ keys: MachineKey[] }>("GET", `${path}/keys`),
    api<MachineActions>("GET", `${path}/actions`),
    api<{ dispatches: Dispatch[] }>("GET", `/v1/dispatches${query({ machine: id, limit: 20 })}`),
  ]);
  if (!ctx.alive()) return;
  sections.keys.set(keys.status === "fulfilled" ? keyTable(keys.value.keys) : failed(keys.reason));
  sections.actions.set(actions.status === "fulfilled" ? actionList(actions.value) : failed(actions.reason));
  sections.dispatches.set(dispatches.status === "fulfilled" ? dispatchList(dispatches.value.dispatches) : failed(dispatches.reason));
}

function section(title: string, content: Node): { el: HTMLElement; set(n: Node): void } {
  const id = uid("sec");
  const body = h("div", null, content);
  return {
    el: h("section", { "aria-labelledby": id }, h("h2", { id }, title), body),
    set: (n) => fill(body, n),
  };
}

function failed(e: unknown): Node {
  return h("p", { class: "error" }, e instanceof Error ? e.message : String(e));
}

function labels(l: Labels | null): Node {
  const entries = Object.entries(l ?? {}).filter(([, v]) => v !== null && v !== undefined && v !== "" && !(Array.isArray(v) && v.length === 0));
  if (!entries.length) return h("p", { class: "empty" }, "No labels.");
  return h(
    "dl",
    { class: "facts" },
    entries.map(([k, v]) => [h("dt", null, plain(k)), h("dd", null, Array.isArray(v) ? v.map(plain).join(", ") : plain(String(v)))]),
  );
}

function keyTable(keys: MachineKey[]): Node {
  const rows = keys.map((k) =>
    row(`v${k.version}`, when(k.created_ms), k.revoked ? "revoked" : k.retired ? "retired" : k.pending ? "pending (issued, not used yet)" : "current"),
  );
  return table("Machine keys", ["Version", "Issued", "Status"], rows, "No machine keys.");
}

function actionList(a: MachineActions): Node {
  if (a.actions === null) return h("p", { class: "empty" }, "The host has not reported its actions yet.");
  if (!a.actions.length) return h("p", { class: "empty" }, "The host offers no actions to the fleet.");
  return h(
    "div",
    null,
    h("p", { class: "hint" }, "As reported ", when(a.reported_ms), "."),
    h(
      "ul",
      { class: "actions" },
      a.actions.map((x: RemoteAction) =>
        h(
          "li",
          null,
          h("strong", null, plain(x.name)),
          ` (tier ${x.tier})`,
          x.description ? ` — ${plain(x.description)}` : "",
          Object.keys(x.params).length ? h("div", { class: "hint" }, paramSummary(x)) : null,
        ),
      ),
    ),
  );
}

function dispatchList(list: Dispatch[]): Node {
  if (!list.length) return h("p", { class: "empty" }, "No dispatches included this machine.");
  return h(
    "ul",
    { class: "dispatches" },
    list.map((d) =>
      h(
        "li",
        null,
        h("a", { href: `#/dispatches/${d.dispatch_id}` }, `${plain(d.action)} · ${d.state}`),
        " by ",
        plain(d.operator),
        ", ",
        when(d.created_ms),
      ),
    ),
  );
}

/** The buttons that apply; after a change the page is drawn again with `done` as its status. */
function buttons(m: Machine, path: string, msgs: Messages, reload: (done: string) => void): Node {
  const out: Node[] = [];
  if (may("operator") && m.state === "active" && !m.banned) {
    out.push(h("a", { class: "button", href: `#/run${query({ machine: m.machine_id })}` }, "Run an action"));
  }
  if (may("admin")) {
    const name = m.hostname;
    const post = (verb: string, done: string) => async () => {
      await api("POST", `${path}/${verb}`);
      reload(done);
    };
    const confirmed = (title: string, text: string, verb: string, run: () => Promise<void>) => async () => {
      if (await confirmAction(title, text, verb)) await run();
    };
    if (m.state === "pending") out.push(action("Approve", post("approve", `${name} approved: its next enrollment gets a key.`), msgs));
    if (!m.banned) {
      out.push(
        action(
          "Ban",
          confirmed(`Ban ${name}`, `Ban ${name}? Its keys stop working at once, its link closes, and it may not enroll again until unbanned.`, "Ban", post("ban", `${name} banned.`)),
          msgs,
          { class: "danger" },
        ),
      );
    } else out.push(action("Unban", post("unban", `${name} unbanned: it may enroll again.`), msgs));
    if (m.state === "quarantined") out.push(action("Clear", post("clear", `${name} cleared: it may link again with its current key.`), msgs));
    else if (m.state !== "removed") {
      out.push(
        action(
          "Quarantine",
          confirmed(`Quarantine ${name}`, `Quarantine ${name}? Its link closes and it gets no link and no dispatch until an admin clears it.`, "Quarantine", post("quarantine", `${name} quarantined.`)),
          msgs,
          { class: "danger" },
        ),
      );
    }
    if (m.state !== "removed") {
      out.push(
        action(
          "Remove",
          confirmed(`Remove ${name}`, `Remove ${name}? Its keys stop working at once and its link closes; it may enroll again later.`, "Remove", async () => {
            await api("DELETE", path);
            reload(`${name} removed.`);
          }),
          msgs,
          { class: "danger" },
        ),
      );
    }
  }
  return out.length ? h("div", { class: "buttons machine-buttons" }, out) : h("div");
}
