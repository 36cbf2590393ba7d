// A job's output as text a person can trust: terminal escapes and other control characters are
// shown as visible symbols (ESC as ␛), never interpreted, and the result only ever goes into a
// text node. Bidirectional overrides are shown too, so output cannot reorder what it shows.

const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

function visible(c: string): string {
  const code = c.charCodeAt(0);
  if (code < 0x20) return String.fromCharCode(0x2400 + code); // ␀ … ␟ (␛ for ESC)
  if (code === 0x7f) return "\u2421"; // ␡
  return `<U+${code.toString(16).toUpperCase().padStart(4, "0")}>`;
}

/** One host's output, chunk by chunk: `\r\n` becomes a line break even when a chunk ends
 * between the two. */
export class OutputText {
  private pendingCr = false;

  /** The visible text of the next chunk. */
  push(data: string): string {
    let s = data;
    if (this.pendingCr) {
      this.pendingCr = false;
      if (!s.startsWith("\n")) s = "\r" + s;
    }
    if (s.endsWith("\r")) {
      this.pendingCr = true;
      s = s.slice(0, -1);
    }
    return s.replace(/\r\n/g, "\n").replace(CONTROL, visible);
  }
}

/** Control characters in a short string (a hostname, a message) shown visibly. */
export function plain(s: string): string {
  return s.replace(CONTROL, visible);
}
