// Builds the console into the three files warden-server embeds:
// crates/warden-server/console/{index.html, app.js, app.css}. Deterministic: the same sources
// and the same pinned esbuild give the same bytes (no timestamps, no source maps, no comments),
// which CI checks by building again and diffing.
import { build } from "esbuild";
import { copyFile, mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "crates", "warden-server", "console");
await mkdir(out, { recursive: true });

const common = {
  bundle: true,
  minify: true,
  sourcemap: false,
  legalComments: "none",
  charset: "utf8",
  write: false,
  logLevel: "warning",
  absWorkingDir: here,
};

const js = await build({
  ...common,
  entryPoints: ["src/main.ts"],
  format: "esm",
  target: "es2020",
  platform: "browser",
});
const css = await build({
  ...common,
  entryPoints: ["src/app.css"],
  target: ["chrome90", "firefox90", "safari14"],
});

for (const [name, result] of [["app.js", js], ["app.css", css]]) {
  if (result.outputFiles.length !== 1) throw new Error(`expected one output for ${name}`);
  await writeFile(join(out, name), result.outputFiles[0].contents);
}
await copyFile(join(here, "src", "index.html"), join(out, "index.html"));

for (const name of ["index.html", "app.js", "app.css"]) {
  const bytes = (await readFile(join(out, name))).length;
  console.log(`${name.padEnd(10)} ${String(bytes).padStart(7)} bytes`);
}
