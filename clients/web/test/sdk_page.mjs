// sdkPage opens the package's browser bundle in one page of Debian's
// Chromium, on a fresh profile: real IndexedDB and WebCrypto, with the SDK
// as window.sdk. A missing Chromium or playwright-core fails the test.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { access, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { bundle, webDir } from "../scripts/load-state.mjs";

const CHROMIUM = "/usr/bin/chromium";
const PLAYWRIGHT = join(webDir, "..", "..", "web", "node_modules", "playwright-core", "index.mjs");

/** sdkPage returns the page, the page errors seen, and close, which ends it all and prints those errors. */
export async function sdkPage(title) {
  await access(CHROMIUM).catch(() => assert.fail(CHROMIUM + " is missing: run `make deps` (Debian's chromium)"));
  await access(PLAYWRIGHT).catch(() => assert.fail("web/node_modules/playwright-core is missing: run `make deps` (npm ci --prefix web)"));
  const { chromium } = await import(pathToFileURL(PLAYWRIGHT).href);
  const js = await bundle("src/index.ts", "browser");
  const server = createServer((req, res) => {
    if (req.url === "/sdk.js") res.writeHead(200, { "content-type": "text/javascript" }).end(js);
    else if (req.url === "/") {
      res.writeHead(200, { "content-type": "text/html" }).end(`<!doctype html><meta charset="utf-8"><title>${title}</title>` +
        '<script type="module">import * as sdk from "/sdk.js"; window.sdk = sdk; window.ready = true;</script>');
    } else res.writeHead(404).end();
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const profile = await mkdtemp(join(tmpdir(), "escrowd-" + title.replace(/\W+/g, "-") + "-"));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  });
  const consoles = [];
  const close = async () => {
    await browser.close().catch(() => {});
    server.close();
    await rm(profile, { recursive: true, force: true });
    if (consoles.length) console.log(consoles.join("\n"));
  };
  const page = await browser.newPage();
  page.on("pageerror", (e) => consoles.push("pageerror: " + e.message));
  await page.goto("http://127.0.0.1:" + server.address().port + "/");
  await page.waitForFunction(() => window.ready === true);
  return { page, consoles, close };
}
