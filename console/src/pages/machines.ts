// Machines: the filtered, paged list (the server pages by a cursor, so a fleet of 100,000 costs
// one page per request), with each machine's link state; for admins, Approve on pending rows and
// the bulk removal of a selection, confirmed first, with a result per machine. The filters are
// kept in the address (`#/machines?state=pending`), so a view can be reloaded or shared.

import { api, may, query } from "../api";
import { checkbox, fill, field, h, uid, when } from "../dom";
import { plain } from "../output";
import { setQuery } from "../route";
import { action, confirmAction, frame, type PageCtx, Pager, row, table } from "../ui";
import type { Machine, Site } from "../types";

const PAGE = 100;
const HOUR = 3_600_000;

/** The `Last seen` choices: [label, seen_after offset, seen_before offset]. */
const SEEN: Record<string, [string, number | null, number | null]> = {
  "": ["any time", null, null],
  "1h": ["in the last hour", HOUR, null],
  "1d": ["in the last day", 24 * HOUR, null],
  "not1d": ["not in the last day", null, 24 * HOUR],
  "not7d": ["not in the last 7 days", null, 7 * 24 * HOUR],
};

export function stateOf(m: Machine): string {
  return m.banned ? "banned" : m.state;
}

export function machineLink(m: Machine): HTMLAnchorElement {
  return h("a", { href: `#/machines/${encodeURIComponent(m.machine_id)}` }, plain(m.hostname));
}

export async function machinesPage(ctx: PageCtx): Promise<void> {
  const msgs = frame(ctx, "Machines");
  const p = ctx.params;
  const admin = may("admin");

  const site = h("select", { name: "site" }, h("option", { value: "" }, "any"));
  const state = h(
    "select",
    { name: "state" },
    ["any", "active", "pending", "quarantined", "banned", "removed"].map((s) => h("option", { value: s === "any" ? "" : s }, s)),
  );
  const text = h("input", { type: "search", name: "text", autocomplete: "off", maxlength: 253 });
  const connection = h(
    "select",
    { name: "connected" },
    h("option", { value: "" }, "any"),
    h("option", { value: "true" }, "connected"),
    h("option", { value: "false" }, "not connected"),
  );
  const seen = h("select", { name: "seen" }, Object.entries(SEEN).map(([v, [label]]) => h("option", { value: v }, label)));
  state.value = p.get("state") ?? "";
  text.value = p.get("text") ?? "";
  connection.value = p.get("connected") ?? "";
  seen.value = p.get("seen") ?? "";

  const filters = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter machines" },
    field("Site", site),
    field("State", state),
    field("Search", text, "hostname or machine id"),
    field("Connection", connection),
    field("Last seen", seen),
  );
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    restart();
  });
  const list = h("div", { class: "list" }, h("p", { class: "loading" }, "Loading machines…"));
  const results = h("div", { class: "results" });
  const selected = new Map<string, Machine>();
  const removeSelected = admin
    ? action(
        "Remove selected",
        async () => {
          try {
            await removeSelection();
          } finally {
            // After the button's own busy state ends: enabled only with a selection.
            setTimeout(updateSelection);
          }
        },
        msgs,
        { class: "danger" },
      )
    : null;
  const pager = new Pager(["First page", "Next page"], () => void load(), true);
  const count = h("p", { class: "count", role: "status" });
  ctx.root.append(filters, h("div", { class: "toolbar" }, count, removeSelected), results, list, pager.el);

  for (const el of [site, state, connection, seen]) el.addEventListener("change", restart);
  let typing = 0;
  text.addEventListener("input", () => {
    clearTimeout(typing);
    typing = window.setTimeout(restart, 300);
  });
  ctx.onLeave(() => clearTimeout(typing));

  function restart(): void {
    pager.reset();
    const q = query({ site: site.value, state: state.value, text: text.value.trim(), connected: connection.value, seen: seen.value });
    setQuery("machines", q);
    void load();
  }

  function updateSelection(): void {
    if (removeSelected) {
      removeSelected.disabled = selected.size === 0;
      fill(removeSelected, selected.size ? `Remove selected (${selected.size})` : "Remove selected");
    }
  }

  let loading = 0;
  async function load(): Promise<void> {
    const mine = ++loading;
    const [after, before] = (SEEN[seen.value] ?? SEEN[""]!).slice(1) as [number | null, number | null];
    const now = Date.now();
    const q = query({
      site: site.value,
      state: state.value,
      text: text.value.trim(),
      connected: connection.value,
      seen_after: after === null ? null : now - after,
      seen_before: before === null ? null : now - before,
      limit: PAGE,
      after: pager.cursor,
    });
    try {
      const res = await api<{ machines: Machine[]; next: string | null }>("GET", `/v1/machines${q}`);
      if (!ctx.alive() || mine !== loading) return;
      selected.clear();
      updateSelection();
      pager.loaded(res.next ?? null);
      const shown = res.machines;
      const n = shown.length;
      fill(count, n ? `${n} machine${n === 1 ? "" : "s"} on this page` : "");
      draw(shown);
    } catch (e) {
      if (ctx.alive()) msgs.error(e);
    }
  }

  function draw(machines: Machine[]): void {
    const heads = ["Hostname", "Site", "State", "Connection", "Key version", "Agent version", "Last seen"];
    const boxes: HTMLInputElement[] = [];
    const rows = machines.map((m) => {
      const cells = [
        machineLink(m),
        m.site_code,
        h("span", { class: `state state-${stateOf(m)}` }, stateOf(m)),
        h("span", { class: m.connected ? "up" : "down" }, m.connected ? "connected" : "not connected"),
        m.machine_key_version ? `v${m.machine_key_version}` : "—",
        m.agent_version ? plain(m.agent_version) : "—",
        when(m.last_seen_ms),
      ];
      if (admin) {
        const { wrap, box } = checkbox(`Select ${m.hostname}`, { class: "select" });
        wrap.classList.add("sr-label");
        box.addEventListener("change", () => {
          if (box.checked) selected.set(m.machine_id, m);
          else selected.delete(m.machine_id);
          updateSelection();
        });
        boxes.push(box);
        const approve =
          m.state === "pending"
            ? action("Approve", async () => {
                await api("POST", `/v1/machines/${encodeURIComponent(m.machine_id)}/approve`);
                msgs.ok(`${m.hostname} approved: its next enrollment gets a key.`);
                await load();
              }, msgs)
            : null;
        return row(wrap, ...cells, approve);
      }
      return row(...cells);
    });
    if (admin) {
      heads.unshift("Select");
      heads.push("Actions");
    }
    const t = table("Machines", heads, rows, "No machines match these filters.");
    if (admin && boxes.length) {
      const { wrap, box } = checkbox("Select all on this page");
      box.addEventListener("change", () => {
        for (const b of boxes) {
          if (b.checked !== box.checked) {
            b.checked = box.checked;
            b.dispatchEvent(new Event("change"));
          }
        }
      });
      fill(list, wrap, t);
    } else fill(list, t);
  }

  async function removeSelection(): Promise<void> {
    const chosen = [...selected.values()];
    if (!chosen.length) return;
    const names = chosen.map((m) => m.hostname);
    const shown = names.length > 5 ? `${names.slice(0, 5).join(", ")} and ${names.length - 5} more` : names.join(", ");
    const ok = await confirmAction(
      "Remove machines",
      `Remove ${chosen.length} machine${chosen.length === 1 ? "" : "s"} (${shown})? Their keys stop working at once and their links close; a removed machine may enroll again.`,
      "Remove",
    );
    if (!ok) return;
    const res = await api<{ results: { machine_id: string; result: string }[] }>("POST", "/v1/machines/bulk-remove", {
      ids: chosen.map((m) => m.machine_id),
    });
    const byId = new Map(chosen.map((m) => [m.machine_id, m]));
    const rows = res.results.map((r) => {
      const m = byId.get(r.machine_id);
      return row(m ? plain(m.hostname) : r.machine_id, h("span", { class: "mono" }, r.machine_id), r.result.replace(/_/g, " "));
    });
    const removed = res.results.filter((r) => r.result === "removed").length;
    msgs.ok(`${removed} of ${res.results.length} removed.`);
    const headId = uid("res");
    const head = h("h2", { id: headId, tabindex: -1 }, "Removal results");
    fill(results, h("section", { "aria-labelledby": headId }, head, table("Removal results", ["Hostname", "Machine id", "Result"], rows, "No results.")));
    await load();
    // The results are where the keyboard goes on (the button is disabled again).
    setTimeout(() => head.focus());
  }

  try {
    const { sites } = await api<{ sites: Site[] }>("GET", "/v1/sites");
    for (const s of sites) site.appendChild(h("option", { value: s.site_code }, s.site_code));
    site.value = p.get("site") ?? "";
  } catch (e) {
    msgs.error(e);
  }
  updateSelection();
  await load();
}
