// Talks to warden-server's API on the same origin. Owns the session as the server described it
// (name, role and the CSRF token), in memory only: nothing is ever written to localStorage,
// sessionStorage, IndexedDB or a cookie by script, and the login token itself lives only in the
// server's HttpOnly cookie, out of this script's reach.

import type { Role, Session } from "./types";

/** An answer other than 2xx: the server's stable error kind and its message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly kind: string,
    message: string,
  ) {
    super(message);
  }
}

let session: Session | null = null;
let onUnauthorized: () => void = () => {};

export function current(): Session | null {
  return session;
}

const RANK: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };

/** Whether the logged-in operator has at least `role`. */
export function may(role: Role): boolean {
  return session !== null && (RANK[session.role] ?? -1) >= RANK[role];
}

/** What to do when the server says the session is gone (show the login page). */
export function whenUnauthorized(f: () => void): void {
  onUnauthorized = f;
}

/** Calls the API: JSON in and out, the CSRF token on every request that is not a GET. */
export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session?.csrf) headers["X-CSRF-Token"] = session.csrf;
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "network", "The server cannot be reached; check the connection and try again.");
  }
  if (res.status === 204) return undefined as T;
  let data: unknown = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) {
    const e = (data as { error?: { kind?: string; message?: string } } | null)?.error;
    const err = new ApiError(res.status, e?.kind ?? "error", e?.message ?? `The server answered ${res.status}.`);
    if (res.status === 401 && path !== "/v1/login") {
      session = null;
      onUnauthorized();
    }
    throw err;
  }
  return data as T;
}

/** Asks the server whether this browser is logged in; `null` when not. */
export async function loadSession(): Promise<Session | null> {
  try {
    session = await api<Session>("GET", "/v1/session");
  } catch (e) {
    session = null;
    if (!(e instanceof ApiError) || e.status !== 401) throw e;
  }
  return session;
}

export async function login(name: string, password: string): Promise<Session> {
  session = await api<Session>("POST", "/v1/login", { name, password, cookie: true });
  return session;
}

export async function logout(): Promise<void> {
  try {
    await api<void>("POST", "/v1/logout");
  } finally {
    session = null;
  }
}

/** Query string from the given pairs, leaving out empty ones. */
export function query(pairs: Record<string, string | number | null | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(pairs)) {
    if (v !== null && v !== undefined && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}
