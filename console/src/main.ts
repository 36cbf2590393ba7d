// The console's entry: asks the server who is logged in, draws the navigation, and routes by the
// URL's hash (`#/machines`, `#/machines/<id>`, …) to one page at a time. A page that is left is
// told so (its live streams close) and its DOM is dropped.

import { current, loadSession, logout, may, whenUnauthorized } from "./api";
import { fill, h } from "./dom";
import { afterLoginPage, go, onRedraw, returnTo } from "./route";
import { describe, type PageCtx } from "./ui";
import { loginPage } from "./pages/login";
import { machinesPage } from "./pages/machines";
import { machinePage } from "./pages/machine";
import { sitesPage } from "./pages/sites";
import { runPage } from "./pages/run";
import { dispatchesPage } from "./pages/dispatches";
import { dispatchPage } from "./pages/dispatch";
import { trailPage } from "./pages/trail";

type Page = (ctx: PageCtx) => void | Promise<void>;

/** Route → page, and the role it needs (`null`: the login page, open to all). */
const ROUTES: Record<string, [Page, "viewer" | "operator" | "admin" | null]> = {
  login: [loginPage, null],
  machines: [machinesPage, "viewer"],
  sites: [sitesPage, "viewer"],
  run: [runPage, "operator"],
  dispatches: [dispatchesPage, "viewer"],
  trail: [trailPage, "admin"],
};
const DETAIL: Record<string, Page> = { machines: machinePage, dispatches: dispatchPage };

const header = h("header", { class: "top" });
const main = h("main", { id: "main" });
let leaving: (() => void)[] = [];
let generation = 0;

function nav(): void {
  const s = current();
  if (!s) {
    fill(header, h("span", { class: "brand" }, "warden"));
    return;
  }
  const route = location.hash.slice(2).split(/[/?]/)[0] ?? "";
  const link = (name: string, label: string) =>
    h("a", { href: `#/${name}`, "aria-current": route === name ? "page" : null }, label);
  const out = h("button", { type: "button", class: "link" }, "Log out");
  out.addEventListener("click", async () => {
    out.disabled = true;
    try {
      await logout();
    } catch {
      // The session is dropped here whatever the server said; the login page follows.
    }
    go("#/login");
  });
  fill(
    header,
    h(
      "nav",
      { "aria-label": "Main" },
      h("span", { class: "brand" }, "warden"),
      h(
        "ul",
        null,
        h("li", null, link("machines", "Machines")),
        h("li", null, link("sites", "Sites")),
        h("li", null, link("dispatches", "Dispatches")),
        may("operator") && h("li", null, link("run", "Run")),
        may("admin") && h("li", null, link("trail", "Trail")),
      ),
      h("span", { class: "who" }, `${s.name} (${s.role})`),
      out,
    ),
  );
}

function render(): void {
  for (const f of leaving) f();
  leaving = [];
  generation += 1;
  const mine = generation;
  const hash = location.hash.replace(/^#\/?/, "");
  const [path = "", search = ""] = hash.split("?", 2) as [string, string?];
  const [name = "", ...rest] = path.split("/");
  const arg = decodeURIComponent(rest.join("/"));
  const session = current();
  if (!session && name !== "login") {
    if (name) returnTo(`#/${hash}`);
    location.replace("#/login");
    return;
  }
  if (session && (name === "login" || name === "")) {
    location.replace(name === "login" ? afterLoginPage() : "#/machines");
    return;
  }
  nav();
  const root = h("div", { class: "page" });
  fill(main, root);
  const ctx: PageCtx = {
    root,
    arg,
    params: new URLSearchParams(search),
    onLeave: (f) => leaving.push(f),
    alive: () => generation === mine,
  };
  const entry = ROUTES[name];
  const page = arg && DETAIL[name] ? DETAIL[name] : entry && !arg ? entry[0] : null;
  const need = entry?.[1];
  if (!page) {
    document.title = "Not found · warden";
    fill(root, h("h1", { tabindex: -1 }, "Not found"), h("p", null, "There is no such page. ", h("a", { href: "#/machines" }, "Go to the machine list.")));
  } else if (need && !may(need)) {
    document.title = "Not allowed · warden";
    fill(root, h("h1", { tabindex: -1 }, "Not allowed"), h("p", null, `This page needs the ${need} role; you are ${session?.role}.`));
  } else {
    Promise.resolve(page(ctx)).catch((e) => {
      if (ctx.alive()) root.appendChild(h("p", { role: "alert", class: "error" }, describe(e)));
    });
  }
}

async function start(): Promise<void> {
  const app = document.getElementById("app") ?? document.body;
  fill(app, h("a", { class: "skip", href: "#main" }, "Skip to content"), header, main);
  // The skip link targets the main element, not a route.
  app.querySelector(".skip")?.addEventListener("click", (e) => {
    e.preventDefault();
    main.querySelector<HTMLElement>("h1")?.focus();
  });
  try {
    await loadSession();
  } catch (e) {
    fill(main, h("h1", null, "warden"), h("p", { role: "alert", class: "error" }, describe(e)));
    return;
  }
  // From now on, a 401 anywhere means the session ended: back to the login page.
  whenUnauthorized(() => {
    returnTo(location.hash);
    go("#/login");
  });
  onRedraw(render);
  window.addEventListener("hashchange", render);
  render();
}

void start();
