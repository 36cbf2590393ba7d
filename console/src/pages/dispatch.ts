// One dispatch, live: its state and summary, a row per host (state, a <progress>, exit code),
// and each host's output as it streams in (GET /v1/dispatches/{id}/events, an EventSource that
// carries the session cookie). Output is only ever appended as text, with terminal escapes
// shown visibly; a chunk seen before (the stream starts over after a reconnect) is skipped.

import { api, may } from "../api";
import { append, fill, h, uid, when } from "../dom";
import { OutputText, plain } from "../output";
import { action, frame, type PageCtx, table } from "../ui";
import type { Chunk, DispatchView, HostPart, Summary } from "../types";

/** States a host's part ends in. */
const FINAL = new Set(["succeeded", "failed", "refused", "cancelled", "not_started", "timed_out", "rolled_back", "lost", "offline"]);
/** Up to this many hosts, each gets its output box at once ("No output yet."); above it, a box
 * appears with a host's first output, so a dispatch to thousands stays light. */
const EAGER_OUTPUT = 50;
/** The order of the summary's counts. */
const ORDER = ["queued", "sent", "running", "succeeded", "failed", "refused", "cancelled", "not_started", "timed_out", "rolled_back", "lost", "offline"];

interface HostView {
  part: HostPart;
  row: HTMLTableRowElement;
  state: HTMLElement;
  progress: HTMLProgressElement;
  exit: HTMLElement;
  detail: HTMLElement;
  name: string;
  /** Its output box, once made. */
  pre: HTMLPreElement | null;
  text: OutputText;
  /** The last output chunk shown. */
  seq: number;
  empty: boolean;
}

export async function dispatchPage(ctx: PageCtx): Promise<void> {
  const id = ctx.arg;
  const base = `/v1/dispatches/${encodeURIComponent(id)}`;
  const msgs = frame(ctx, id);
  let view: DispatchView;
  try {
    view = await api<DispatchView>("GET", base);
  } catch (e) {
    msgs.error(e);
    return;
  }
  if (!ctx.alive()) return;
  const d = view.dispatch;

  const stateText = h("span", { class: "state" });
  const summaryText = h("span");
  const stoppedText = h("p", { class: "warning" });
  const cancel = may("operator")
    ? action("Cancel dispatch", async () => {
        const r = await api<DispatchView & { not_started: number; asked_to_cancel: number }>("POST", `${base}/cancel`);
        msgs.ok(`Cancel asked: ${r.not_started} host${r.not_started === 1 ? "" : "s"} not started, ${r.asked_to_cancel} asked to stop.`);
        setState(r.dispatch.state, r.dispatch.stopped, r.dispatch.cancel_requested);
      }, msgs, { class: "danger" })
    : null;
  const excluded = d.excluded?.length ? leftOut(d.excluded) : null;
  const params = Object.entries(d.params ?? {});
  append(ctx.root, [
    h(
      "dl",
      { class: "facts" },
      h("dt", null, "Action"),
      h("dd", null, plain(d.action)),
      params.length ? [h("dt", null, "Parameters"), h("dd", { class: "mono" }, params.map(([k, v]) => `${plain(k)}=${plain(JSON.stringify(v))}`).join("  "))] : null,
      h("dt", null, "Operator"),
      h("dd", null, plain(d.operator)),
      h("dt", null, "Created"),
      h("dd", null, when(d.created_ms)),
      h("dt", null, "State"),
      h("dd", { "aria-live": "polite" }, stateText, " · ", summaryText),
      h("dt", null, "Brakes"),
      h("dd", null, `batch ${d.batch}, canary ${d.canary}, max failures ${d.max_failures ?? "none"}`),
    ),
    stoppedText,
    excluded,
    cancel ? h("div", { class: "buttons" }, cancel) : null,
  ]);

  const hosts = new Map<string, HostView>();
  const body = h("tbody");
  const capId = uid("cap");
  const outputs = h("div", { class: "outputs" });
  ctx.root.append(
    view.hosts.length
      ? h(
          "div",
          { class: "table-wrap", role: "region", "aria-labelledby": capId, tabindex: 0 },
          h("table", null, h("caption", { id: capId }, "Hosts"), h("thead", null, h("tr", null, ["Host", "State", "Progress", "Exit code", "Detail"].map((t) => h("th", { scope: "col" }, t)))), body),
        )
      : table("Hosts", [], [], "No hosts in this dispatch."),
    h("h2", null, "Output"),
    outputs,
  );

  function host(p: HostPart): HostView {
    const known = hosts.get(p.machine_id);
    if (known) return known;
    const name = plain(p.hostname);
    const state = h("span", { class: "state" });
    const progress = h("progress", { max: 100, "aria-label": `Progress of ${name}` });
    const exit = h("span");
    const detail = h("span");
    const r = h(
      "tr",
      null,
      h("td", null, h("a", { href: `#/machines/${encodeURIComponent(p.machine_id)}` }, name)),
      h("td", null, state),
      h("td", null, progress),
      h("td", null, exit),
      h("td", null, detail),
    );
    body.appendChild(r);
    const v: HostView = { part: p, row: r, state, progress, exit, detail, name, pre: null, text: new OutputText(), seq: 0, empty: true };
    hosts.set(p.machine_id, v);
    if (eager) outputBox(v);
    return v;
  }

  /** The host's output box: a region named `Output of <hostname>` holding a <pre>. */
  function outputBox(v: HostView): HTMLPreElement {
    if (v.pre) return v.pre;
    const pre = h("pre", { class: "output", tabindex: 0 }, h("span", { class: "empty" }, "No output yet."));
    outputs.appendChild(
      h("section", { role: "region", "aria-label": `Output of ${v.name}`, class: "output-box" }, h("h3", null, `Output of ${v.name}`), pre),
    );
    v.pre = pre;
    return pre;
  }

  function showHost(p: HostPart): void {
    const known = hosts.has(p.machine_id);
    const v = host(p);
    if (known) count(v.part.state, -1);
    count(p.state, 1);
    v.part = p;
    fill(v.state, p.state.replace(/_/g, " "));
    v.state.className = `state state-${p.state}`;
    const pct = p.progress?.percent;
    if (p.state === "succeeded") v.progress.value = 100;
    else if (typeof pct === "number") v.progress.value = Math.max(0, Math.min(100, pct));
    else if (p.state === "running" || p.state === "sent") v.progress.removeAttribute("value");
    else if (!FINAL.has(p.state)) v.progress.value = 0;
    if (FINAL.has(p.state) && !v.progress.hasAttribute("value")) v.progress.value = 0;
    fill(v.exit, p.exit_code === null || p.exit_code === undefined ? "—" : String(p.exit_code));
    const why = [
      p.progress?.phase && !FINAL.has(p.state) ? plain(p.progress.phase) : null,
      p.refusal_kind ? `${p.refusal_kind}: ${plain(p.refusal_message ?? "")}` : null,
      p.note ? plain(p.note) : null,
      p.result !== null && p.result !== undefined ? `result ${short(JSON.stringify(p.result))}` : null,
      p.output_truncated ? "output truncated" : null,
    ].filter(Boolean);
    fill(v.detail, why.length ? why.join("; ") : "");
    if (!ended) showCounts();
  }

  function showChunk(c: Chunk): void {
    const v = hosts.get(c.machine_id);
    if (!v || c.seq <= v.seq) return;
    v.seq = c.seq;
    const pre = outputBox(v);
    if (v.empty) {
      fill(pre);
      v.empty = false;
    }
    const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(...v.text.push(c.data));
    if (stick) pre.scrollTop = pre.scrollHeight;
  }

  /** Hosts by state, kept as host events arrive (the server's summary once it ended). */
  const tally: Summary = {};
  function count(state: string, by: number): void {
    tally[state] = (tally[state] ?? 0) + by;
  }
  function showCounts(s: Summary = { ...tally, total: hosts.size }): void {
    const total = s.total ?? hosts.size;
    const parts = ORDER.filter((k) => (s[k] ?? 0) > 0).map((k) => `${k.replace(/_/g, " ")} ${s[k]}`);
    fill(summaryText, `${total} host${total === 1 ? "" : "s"}${parts.length ? `: ${parts.join(", ")}` : ""}`);
  }

  function setState(state: string, stopped: string | null, cancelRequested: boolean): void {
    fill(stateText, state === "running" && cancelRequested ? "running (cancel asked)" : state);
    stateText.className = `state state-${state}`;
    fill(stoppedText, stopped ? `Stopped starting hosts: ${stopped}.` : "");
    stoppedText.hidden = !stopped;
    if (cancel) cancel.hidden = state !== "running";
  }

  const eager = view.hosts.length <= EAGER_OUTPUT;
  let ended = false;
  for (const p of view.hosts) showHost(p);
  setState(d.state, d.stopped, d.cancel_requested);
  showCounts(view.summary);
  if (!eager) outputs.appendChild(h("p", { class: "hint" }, "A host's output appears here once it has some."));

  // The stream: every host once, then each change; every stored chunk in order; then the end.
  const es = new EventSource(`${base}/events`);
  ctx.onLeave(() => es.close());
  const parse = <T>(e: Event): T | null => {
    try {
      return JSON.parse((e as MessageEvent<string>).data) as T;
    } catch {
      return null;
    }
  };
  es.addEventListener("host", (e) => {
    const p = parse<HostPart>(e);
    if (p) showHost(p);
  });
  es.addEventListener("output", (e) => {
    const c = parse<Chunk>(e);
    if (c) showChunk(c);
  });
  es.addEventListener("end", (e) => {
    es.close();
    const end = parse<{ state: string; stopped: string | null; summary: Summary }>(e);
    if (!end) return;
    ended = true;
    setState(end.state, end.stopped, false);
    showCounts(end.summary);
    for (const v of hosts.values()) if (v.empty && v.pre) fill(v.pre, h("span", { class: "empty" }, "No output."));
  });
  es.addEventListener("error", () => {
    // EventSource tries again by itself after a dropped connection; it gives up on an answer
    // that is not a stream (a session that ended): asking who we are then leads to the login
    // page if that is why.
    if (es.readyState !== EventSource.CLOSED || !ctx.alive()) return;
    api("GET", "/v1/session").then(
      () => msgs.error("The live stream closed; reload the page to follow the dispatch."),
      (err) => msgs.error(err),
    );
  });
}

/** The machines the target named that were left out: counted by reason, listed on demand. */
function leftOut(list: { machine_id: string; reason: string }[]): HTMLElement {
  const by = new Map<string, number>();
  for (const x of list) by.set(x.reason, (by.get(x.reason) ?? 0) + 1);
  const why = [...by].map(([r, n]) => `${n} ${r.replace(/_/g, " ")}`).join(", ");
  return h(
    "details",
    { class: "left-out" },
    h("summary", null, `${list.length} machine${list.length === 1 ? "" : "s"} left out (${why})`),
    h("ul", null, list.map((x) => h("li", null, h("span", { class: "mono" }, plain(x.machine_id)), ` ${x.reason.replace(/_/g, " ")}`))),
  );
}

/** A value shown in a table cell: control characters visible, at most 120 characters. */
function short(text: string): string {
  const t = plain(text);
  return t.length > 120 ? `${t.slice(0, 119)}…` : t;
}
