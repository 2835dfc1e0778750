// Drives the browser test page (clients/web/test/browser/index.html) in
// headless Chromium (Debian's /usr/bin/chromium, never a downloaded
// browser) and prints what the page did as one JSON object on stdout. A
// virtual WebAuthn authenticator with the PRF extension (DevTools
// Protocol) stands in for a passkey.
// Usage: node run.mjs URL [screenshot.png]
import { chromium } from "playwright-core";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

const CHROMIUM = "/usr/bin/chromium";
const [url, shot] = process.argv.slice(2);
if (!url) {
  console.error("usage: node run.mjs URL [screenshot.png]");
  process.exit(2);
}
const profile = await mkdtemp(join(tmpdir(), "escrowd-chromium-"));
const out = { console: [], timings: {}, errors: {} };
// stage runs one part of the run; a failure is recorded and the next part
// still runs, so one broken part does not hide the others' results.
const stage = async (name, fn) => {
  const t0 = Date.now();
  try {
    return await fn();
  } catch (e) {
    out.errors[name] = e && e.stack ? e.stack : String(e);
    return undefined;
  } finally {
    out.timings[name] = Date.now() - t0;
  }
};
let browser;
try {
  const t0 = Date.now();
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"],
  });
  out.timings.launch = Date.now() - t0;
  const page = await browser.newPage();
  page.on("console", (m) => out.console.push(m.type() + ": " + m.text()));
  page.on("pageerror", (e) => out.console.push("pageerror: " + e.message));
  await page.goto(url);
  await page.waitForFunction(() => window.ready === true || window.loadError !== undefined, null, { timeout: 30000 });
  const loadError = await page.evaluate(() => window.loadError);
  if (loadError) throw new Error("the page did not load its fixture: " + loadError);

  out.all = await stage("slots", () => page.evaluate(() => window.openAll()));
  out.vectors = await stage("vectors", () => page.evaluate(() => window.runAllVectors()));

  // A platform authenticator with user verification and the PRF extension.
  out.passkey = await stage("passkey", async () => {
    const cdp = await browser.newCDPSession(page);
    await cdp.send("WebAuthn.enable", { enableUI: false });
    const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", { options: {
      protocol: "ctap2", transport: "internal", hasResidentKey: true, hasUserVerification: true,
      isUserVerified: true, hasPrf: true, automaticPresenceSimulation: true,
    } });
    const res = await page.evaluate(() => window.passkeyFlow());
    const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
    res.authenticator = credentials.map((c) => ({ id: c.credentialId, resident: c.isResidentCredential, signCount: c.signCount }));
    return res;
  });

  // The unlock form, typed as a person types.
  out.typed = {};
  await stage("typed", async () => {
    const cases = await page.evaluate(() => window.fixture.typed);
    for (const c of cases) {
      await page.selectOption("#set", c.set);
      await page.fill("#code", "");
      await page.locator("#code").pressSequentially(c.code, { delay: 5 });
      await page.evaluate(() => { document.querySelector("#status").dataset.done = "0"; });
      await page.click("#unlock");
      await page.waitForFunction(() => document.querySelector("#status").dataset.done === "1", null, { timeout: 30000 });
      out.typed[c.name] = await page.evaluate(() => {
        const s = document.querySelector("#status");
        return { code: s.dataset.code, commit: s.dataset.commit, version: s.dataset.version, text: s.textContent,
          typed: document.querySelector("#code").value };
      });
      if (shot && c.name === "right code") await page.screenshot({ path: shot, fullPage: true });
    }
  });
} catch (e) {
  out.errors.run = e && e.stack ? e.stack : String(e);
} finally {
  if (browser) await browser.close().catch(() => {});
  await rm(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(out));
process.exit(Object.keys(out.errors).length ? 1 : 0);
