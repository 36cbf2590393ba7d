// A job's output as text a person can trust: terminal escapes and other control characters are
// never interpreted but shown, each as its Unicode control picture (ESC as ␛) in a marked span
// whose look names it ("ESC") even where no font has the picture; bidirectional overrides are
// shown the same way, so output cannot reorder what it shows. Everything becomes text nodes.

import { h } from "./dom";

const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
const C0 = "NUL SOH STX ETX EOT ENQ ACK BEL BS HT LF VT FF CR SO SI DLE DC1 DC2 DC3 DC4 NAK SYN ETB CAN EM SUB ESC FS GS RS US".split(" ");

/** The visible stand-in of a control character, and its short name. */
function picture(c: string): [string, string] {
  const code = c.charCodeAt(0);
  if (code < 0x20) return [String.fromCharCode(0x2400 + code), C0[code] ?? "?"]; // ␀ … ␟ (␛ for ESC)
  if (code === 0x7f) return ["\u2421", "DEL"]; // ␡
  const u = `U+${code.toString(16).toUpperCase().padStart(4, "0")}`;
  return [`<${u}>`, u];
}

/** One host's output, chunk by chunk: `\r\n` becomes a line break even when a chunk ends
 * between the two. */
export class OutputText {
  private pendingCr = false;

  /** The nodes of the next chunk: text, and a marked span per control character. */
  push(data: string): Node[] {
    let s = data;
    if (this.pendingCr) {
      this.pendingCr = false;
      if (!s.startsWith("\n")) s = "\r" + s;
    }
    if (s.endsWith("\r")) {
      this.pendingCr = true;
      s = s.slice(0, -1);
    }
    s = s.replace(/\r\n/g, "\n");
    const out: Node[] = [];
    let at = 0;
    for (const m of s.matchAll(CONTROL)) {
      const i = m.index ?? 0;
      if (i > at) out.push(document.createTextNode(s.slice(at, i)));
      const [pic, name] = picture(m[0]);
      out.push(h("span", { class: "ctl", "data-name": name, title: name }, pic));
      at = i + m[0].length;
    }
    if (at < s.length) out.push(document.createTextNode(s.slice(at)));
    return out;
  }
}

/** Control characters in a short string (a hostname, a message) shown as their pictures. */
export function plain(s: string): string {
  return s.replace(CONTROL, (c) => picture(c)[0]);
}
