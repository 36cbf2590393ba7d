// The audit trail (admins): the server's events, newest first, of one kind when asked, paged
// back by the server's cursor.

import { api, query } from "../api";
import { fill, field, h, uid, when } from "../dom";
import { plain } from "../output";
import { setQuery } from "../route";
import { frame, type PageCtx, Pager, row, table } from "../ui";
import type { AuditEvent } from "../types";

const PAGE = 100;

/** The kinds the server records (docs/SERVER.md), offered as suggestions. */
const KINDS = [
  "enroll.new", "enroll.reuse", "enroll.pending", "enroll.rejected", "enroll.site_conflict", "enroll.banned",
  "enroll.quarantined", "enroll.rate_limited", "key.rotate", "site.add", "machine.approve", "machine.remove",
  "machine.ban", "machine.unban", "machine.key_revoke", "machine.quarantine", "machine.clear", "machine.key_rotated",
  "machine.key_replayed", "machine.link_duplicate", "login.success", "login.failure", "login.rate_limited", "logout",
  "token.create", "token.revoke", "dispatch.create", "dispatch.cancel", "dispatch.refused", "events.suppressed",
];

export async function trailPage(ctx: PageCtx): Promise<void> {
  const msgs = frame(ctx, "Trail");
  const listId = uid("kinds");
  const kind = h("input", { type: "text", list: listId, autocomplete: "off", spellcheck: "false", value: ctx.params.get("kind") ?? "" });
  const filter = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter events" },
    field("Kind", kind, "exact, e.g. login.failure; empty: all"),
    h("datalist", { id: listId }, KINDS.map((k) => h("option", { value: k }))),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Filter")),
  );
  const list = h("div", null, h("p", { class: "loading" }, "Loading events…"));
  const pager = new Pager(["Newer", "Older"], () => void load());
  ctx.root.append(filter, list, pager.el);
  const apply = () => {
    pager.reset();
    setQuery("trail", query({ kind: kind.value.trim() }));
    void load();
  };
  filter.addEventListener("submit", (e) => {
    e.preventDefault();
    apply();
  });
  kind.addEventListener("change", apply);

  let loading = 0;
  async function load(): Promise<void> {
    const mine = ++loading;
    try {
      const res = await api<{ events: AuditEvent[]; next_before: number | null }>(
        "GET",
        `/v1/events${query({ kind: kind.value.trim(), before: pager.cursor, limit: PAGE })}`,
      );
      if (!ctx.alive() || mine !== loading) return;
      pager.loaded(res.next_before ?? null);
      const rows = res.events.map((e) =>
        row(when(e.ts_ms), h("span", { class: "mono" }, plain(e.kind)), plain(e.actor), plain(e.target), plain(e.source), plain(e.detail)),
      );
      fill(list, table("Audit events, newest first", ["Time", "Kind", "Actor", "Target", "Source", "Detail"], rows, kind.value.trim() ? "No events of this kind." : "No events yet."));
    } catch (e) {
      msgs.error(e);
    }
  }
  await load();
}
