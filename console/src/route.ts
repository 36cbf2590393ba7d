// Navigation by the URL's hash, and where to return after a login. Pages call `go`; main.ts
// owns drawing.

let redraw: () => void = () => {};
/** Where to go after logging in (the page asked for before the login page). */
let afterLogin = "#/machines";

export function onRedraw(f: () => void): void {
  redraw = f;
}

/** Navigates to `hash`; draws again even when the hash does not change. */
export function go(hash: string): void {
  if (location.hash === hash) redraw();
  else location.hash = hash;
}

/** Remembers the page to come back to after the login page. */
export function returnTo(hash: string): void {
  if (!hash.startsWith("#/login") && hash !== "#/" && hash !== "") afterLogin = hash;
}

/** The page to go to after a login (and forgets it). */
export function afterLoginPage(): string {
  const h = afterLogin;
  afterLogin = "#/machines";
  return h;
}

/** Replaces the hash's query without drawing again (filters kept in the address). */
export function setQuery(path: string, q: string): void {
  history.replaceState(null, "", `#/${path}${q}`);
}
