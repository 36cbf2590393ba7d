// The one way this app makes DOM: elements by createElement, text by text nodes. Nothing here
// (or anywhere in the app) parses HTML, so data from the server can only ever become text.

export type Child = Node | string | number | null | undefined | false | Child[];
type Handler = (e: Event) => void;
export type Attrs = Record<string, string | number | boolean | null | undefined | Handler>;

/** An element with attributes (`onX` adds a listener; `true` sets a boolean attribute; `value`
 * and `checked` set the property) and children (strings become text nodes). */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  let value: unknown;
  let checked: unknown;
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value") value = v;
    else if (k === "checked") checked = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  if (value !== undefined) (el as unknown as { value: string }).value = String(value);
  if (checked !== undefined) (el as unknown as { checked: boolean }).checked = Boolean(checked);
  return el;
}

export function append(el: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
}

/** Replaces every child of `el`. */
export function fill(el: Node, ...children: Child[]): void {
  while (el.firstChild) el.removeChild(el.firstChild);
  append(el, children);
}

let ids = 0;
/** A fresh id for `for`/`aria-labelledby` pairs. */
export function uid(prefix: string): string {
  ids += 1;
  return `${prefix}-${ids}`;
}

/** A time in UTC, as a `<time>` element (`never` for none). */
export function when(ms: number | null | undefined): Node {
  if (!ms) return document.createTextNode("never");
  const d = new Date(ms);
  const iso = d.toISOString();
  return h("time", { datetime: iso }, `${iso.slice(0, 10)} ${iso.slice(11, 19)}Z`);
}

/** A labelled form control in a `.field` wrapper. */
export function field(label: string, control: HTMLElement, hint?: string): HTMLElement {
  const id = control.id || uid("f");
  control.id = id;
  let hintEl: HTMLElement | null = null;
  if (hint) {
    hintEl = h("span", { class: "hint", id: `${id}-hint` }, hint);
    control.setAttribute("aria-describedby", hintEl.id);
  }
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hintEl);
}

/** A checkbox with its label after it. */
export function checkbox(label: string, attrs: Attrs = {}): { wrap: HTMLElement; box: HTMLInputElement } {
  const box = h("input", { type: "checkbox", id: uid("c"), ...attrs });
  const wrap = h("div", { class: "check" }, box, h("label", { for: box.id }, label));
  return { wrap, box };
}
