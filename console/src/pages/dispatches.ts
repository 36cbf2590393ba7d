// Dispatches, newest first, paged by the server's cursor; each links to its live page.

import { api, query } from "../api";
import { fill, h, when } from "../dom";
import { plain } from "../output";
import { frame, type PageCtx, Pager, row, table } from "../ui";
import type { Dispatch } from "../types";

const PAGE = 50;

export async function dispatchesPage(ctx: PageCtx): Promise<void> {
  const msgs = frame(ctx, "Dispatches");
  const list = h("div", null, h("p", { class: "loading" }, "Loading dispatches…"));
  const pager = new Pager(["Newer", "Older"], () => void load());
  ctx.root.append(list, pager.el);

  async function load(): Promise<void> {
    try {
      const res = await api<{ dispatches: Dispatch[]; next_before: number | null }>(
        "GET",
        `/v1/dispatches${query({ limit: PAGE, before: pager.cursor })}`,
      );
      if (!ctx.alive()) return;
      pager.loaded(res.next_before ?? null);
      const rows = res.dispatches.map((d) =>
        row(
          h("a", { href: `#/dispatches/${d.dispatch_id}`, class: "mono" }, d.dispatch_id),
          plain(d.action),
          plain(d.operator),
          h("span", { class: `state state-${d.state}` }, d.state),
          when(d.created_ms),
          d.ended_ms ? when(d.ended_ms) : "—",
        ),
      );
      fill(list, table("Dispatches, newest first", ["Dispatch", "Action", "Operator", "State", "Created", "Ended"], rows, "No dispatches yet."));
    } catch (e) {
      msgs.error(e);
    }
  }
  await load();
}
