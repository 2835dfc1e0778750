// Drives web/index.html in headless Chromium (Debian's /usr/bin/chromium,
// never a downloaded browser) and prints what the page did as JSON.
// Usage: node run.mjs URL [screenshot.png]
import { chromium } from "playwright-core";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, shot] = process.argv.slice(2);
const profile = await mkdtemp(join(tmpdir(), "escrowd-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"],
});
const out = { console: [] };
try {
  const page = await browser.newPage();
  page.on("console", (m) => out.console.push(m.type() + ": " + m.text()));
  page.on("pageerror", (e) => out.console.push("pageerror: " + e.message));
  await page.goto(url);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 20000 });
  out.all = await page.evaluate(() => window.openAll());
  const cases = await page.evaluate(() => window.fixture.typed);
  out.typed = {};
  for (const c of cases) {
    await page.selectOption("#slot", c.slot);
    await page.fill("#code", "");
    await page.locator("#code").pressSequentially(c.code, { delay: 10 });
    await page.evaluate(() => { document.querySelector("#status").dataset.done = "0"; });
    await page.click("#unlock");
    await page.waitForFunction(() => document.querySelector("#status").dataset.done === "1", null, { timeout: 20000 });
    out.typed[c.name] = await page.evaluate(() => {
      const s = document.querySelector("#status");
      return { code: s.dataset.code, gdk: s.dataset.gdk, text: s.textContent };
    });
    if (shot && c.name === "right code") await page.screenshot({ path: shot, fullPage: true });
  }
} finally {
  await browser.close();
  await rm(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(out));
