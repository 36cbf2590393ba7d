// Pieces every page uses: the page's frame (its one <h1>, messages), tables that scroll on a
// narrow screen, modal dialogs with focus handling (native <dialog>), and a pager.

import { ApiError } from "./api";
import { type Child, fill, h, uid } from "./dom";

/** What a page gets: where to draw, the route's argument and query, and a way to stop what it
 * started (streams, timers) when the operator leaves it. */
export interface PageCtx {
  root: HTMLElement;
  arg: string;
  params: URLSearchParams;
  onLeave(f: () => void): void;
  /** False once the operator went to another page. */
  alive(): boolean;
}

/** A message for the next page drawn (after an action that redraws the page). */
let flash: string | null = null;
export function flashNext(text: string): void {
  flash = text;
}

/** The page's heading (focused, so keyboard and screen reader users start there after a
 * navigation) and a message area below it. */
export function frame(ctx: PageCtx, title: string, ...intro: Child[]): Messages {
  document.title = `${title} · warden`;
  const h1 = h("h1", { tabindex: -1 }, title);
  const msgs = new Messages();
  fill(ctx.root, h("div", { class: "page-head" }, h1, ...intro), msgs.el);
  if (flash) msgs.ok(flash);
  flash = null;
  h1.focus();
  return msgs;
}

/** An error line (`role="alert"`) and a status line (`role="status"`), shown one at a time. */
export class Messages {
  readonly el: HTMLElement;
  private readonly alert: HTMLElement;
  private readonly status: HTMLElement;
  constructor() {
    this.alert = h("p", { role: "alert", class: "error" });
    this.status = h("p", { role: "status", class: "ok" });
    this.el = h("div", { class: "messages" }, this.alert, this.status);
  }
  error(e: unknown): void {
    fill(this.status);
    fill(this.alert, describe(e));
  }
  ok(text: string): void {
    fill(this.alert);
    fill(this.status, text);
  }
  clear(): void {
    fill(this.alert);
    fill(this.status);
  }
}

/** An error as the operator should read it: the server's message as it said it. */
export function describe(e: unknown): string {
  if (e instanceof ApiError) return e.message;
  if (e instanceof Error) return e.message;
  return String(e);
}

/** A table with a caption and header row, in a wrapper that scrolls sideways on a narrow
 * screen; the wrapper is a labelled, focusable region so a keyboard can scroll it. */
export function table(caption: string, heads: string[], rows: HTMLTableRowElement[], empty: string): HTMLElement {
  if (rows.length === 0) return h("p", { class: "empty" }, empty);
  const capId = uid("cap");
  return h(
    "div",
    { class: "table-wrap", role: "region", "aria-labelledby": capId, tabindex: 0 },
    h(
      "table",
      null,
      h("caption", { id: capId }, caption),
      h("thead", null, h("tr", null, heads.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", null, rows),
    ),
  );
}

/** A row of cells. */
export function row(...cells: Child[]): HTMLTableRowElement {
  return h("tr", null, cells.map((c) => h("td", null, c)));
}

/** A modal dialog (`<dialog>` with `showModal`: focus moves in, stays in, and returns to what
 * opened it when it closes). `build` fills it and gets a `close` to call. */
export function dialog(
  title: string,
  build: (body: HTMLElement, close: () => void) => void,
  onClose?: () => void,
): HTMLDialogElement {
  const titleId = uid("dlg");
  const opener = document.activeElement as HTMLElement | null;
  const body = h("div", { class: "dialog-body" });
  const d = h("dialog", { "aria-labelledby": titleId }, h("h2", { id: titleId }, title), body);
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    onClose?.();
    if (d.open) d.close();
    d.remove();
    // Back to what opened it (once the task that opened it is over: a button busy with it is
    // disabled until then); if the page was redrawn meanwhile, to the page's heading.
    setTimeout(() => {
      if (opener && opener.isConnected) opener.focus();
      else document.querySelector<HTMLElement>("main h1")?.focus();
    });
  };
  d.addEventListener("cancel", (e) => {
    e.preventDefault();
    close();
  });
  build(body, close);
  document.body.appendChild(d);
  d.showModal();
  return d;
}

/** Asks before something that cannot be taken back; resolves true when confirmed. */
export function confirmAction(title: string, text: Child, confirm: string): Promise<boolean> {
  return new Promise((resolve) => {
    let answer = false;
    dialog(
      title,
      (body, close) => {
        const yes = h("button", { type: "button", class: "danger", onclick: () => ((answer = true), close()) }, confirm);
        const no = h("button", { type: "button", onclick: close }, "Cancel");
        fill(body, h("p", null, text), h("div", { class: "buttons" }, yes, no));
        queueMicrotask(() => no.focus());
      },
      () => resolve(answer),
    );
  });
}

/** A button that disables itself while its action runs, and reports a failure to `msgs`. */
export function action(label: string, run: () => Promise<void>, msgs: Messages, attrs: Record<string, string> = {}): HTMLButtonElement {
  const b = h("button", { type: "button", ...attrs }, label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await run();
    } catch (e) {
      msgs.error(e);
    } finally {
      b.disabled = false;
      // A disabled button loses focus; give it back if nothing else took it.
      if (b.isConnected && (document.activeElement === document.body || document.activeElement === null)) b.focus();
    }
  });
  return b;
}

/** Paging through a list by the server's cursor: the second button follows it, the first goes
 * back up the cursors seen (or straight to the first page). */
export class Pager {
  private stack: (string | number | null)[] = [];
  cursor: string | number | null = null;
  next: string | number | null = null;
  readonly el: HTMLElement;
  private readonly newer: HTMLButtonElement;
  private readonly older: HTMLButtonElement;
  constructor(
    labels: [string, string],
    private readonly load: () => void,
    /** The first button goes back to the first page, not one page up. */
    private readonly toFirst = false,
  ) {
    this.newer = h("button", { type: "button", onclick: () => this.back() }, labels[0]);
    this.older = h("button", { type: "button", onclick: () => this.forward() }, labels[1]);
    this.el = h("div", { class: "pager" }, this.newer, this.older);
    this.update();
  }
  /** After a page loaded: where the next one starts (null: none). */
  loaded(next: string | number | null): void {
    this.next = next;
    this.update();
  }
  reset(): void {
    this.stack = [];
    this.cursor = null;
    this.next = null;
  }
  private forward(): void {
    if (this.next === null) return;
    this.stack.push(this.cursor);
    this.cursor = this.next;
    this.load();
  }
  private back(): void {
    if (this.stack.length === 0) return;
    this.cursor = this.toFirst ? null : (this.stack.pop() ?? null);
    if (this.toFirst) this.stack = [];
    this.load();
  }
  private update(): void {
    this.newer.disabled = this.stack.length === 0;
    this.older.disabled = this.next === null;
  }
}
