// Bundles src/state (TypeScript) with esbuild into a temporary module and
// imports it, so that Node's test runner and the diagram generator run the
// code itself, with no build step of their own.
import { build } from "esbuild";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

export const webDir = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Bundles entry (relative to clients/web) for platform; returns the output's text. */
export async function bundle(entry, platform = "neutral") {
  const r = await build({
    entryPoints: [join(webDir, entry)],
    bundle: true,
    format: "esm",
    platform,
    target: "es2022",
    write: false,
    logLevel: "error",
  });
  return r.outputFiles[0].text;
}

/** Imports entry (default: the state module's index) bundled for Node. */
export async function loadState(entry = "src/state/index.ts") {
  const dir = await mkdtemp(join(tmpdir(), "escrowd-state-"));
  try {
    const file = join(dir, "state.mjs");
    const { writeFile } = await import("node:fs/promises");
    await writeFile(file, await bundle(entry));
    return await import(pathToFileURL(file).href);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
