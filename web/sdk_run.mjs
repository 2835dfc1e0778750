// Drives the SDK test page (clients/web/test/browser/sdk.html, e2e/browser_sdk_test.go)
// in headless Chromium (Debian's /usr/bin/chromium) through the scenarios
// of the device SDK, and prints what happened as one JSON object. After
// every scenario it dumps IndexedDB, Cache Storage and localStorage.
// Usage: node sdk_run.mjs URL
import { chromium } from "playwright-core";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

const CHROMIUM = "/usr/bin/chromium";
const [url] = process.argv.slice(2);
if (!url) {
  console.error("usage: node sdk_run.mjs URL");
  process.exit(2);
}
const base = new URL(url);
const get = async (path) => {
  const r = await fetch(new URL(path, base));
  if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()));
  return r.json();
};
const profile = await mkdtemp(join(tmpdir(), "escrowd-chromium-"));
const out = { console: [], timings: {}, errors: {}, results: {}, dumps: {}, secrets: [] };
let page;
const collect = async () => {
  out.secrets.push(...(await page.evaluate(() => window.sdk.secrets())));
};
// scenario runs one step; the first failure stops the run (later steps
// depend on earlier ones), and the storage is dumped after each.
const scenario = async (name, fn) => {
  const t0 = Date.now();
  try {
    out.results[name] = await fn();
    await collect();
    out.dumps[name] = await page.evaluate(() => window.sdk.dump());
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
  page = await browser.newPage();
  page.on("console", (m) => out.console.push(m.type() + ": " + m.text()));
  page.on("pageerror", (e) => out.console.push("pageerror: " + e.message));
  const fixture = await get("/fixture.json");
  const load = async () => {
    await page.waitForFunction(() => window.sdkReady === true, null, { timeout: 30000 });
    return page.evaluate((fx) => window.sdk.start(fx), fixture);
  };
  await page.goto(new URL("/sdk.html", base).href);
  out.results.start = await load();

  await scenario("enrol", () => page.evaluate(() => window.sdk.enrol()));
  await scenario("device key", () => page.evaluate(() => window.sdk.deviceKey()));
  await scenario("service worker", () => page.evaluate(() => window.sdk.serviceWorker()));
  await scenario("passkey", async () => {
    const cdp = await browser.newCDPSession(page);
    await cdp.send("WebAuthn.enable", { enableUI: false });
    const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", { options: {
      protocol: "ctap2", transport: "internal", hasResidentKey: true, hasUserVerification: true,
      isUserVerified: true, hasPrf: true, automaticPresenceSimulation: true,
    } });
    const res = await page.evaluate(() => window.sdk.passkey());
    const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
    res.authenticator = credentials.map((c) => c.credentialId);
    return res;
  });
  await scenario("offline reload", async () => {
    await browser.setOffline(true);
    await page.reload();
    const start = await load();
    return { start, ...(await page.evaluate((pw) => window.sdk.offline(pw), fixture.password)) };
  });
  let typed = "";
  await scenario("recovery offline", async () => {
    // Support reveals the code over gRPC and reads it out; the user types
    // it in lower case with dashes.
    const { code } = await get("/test/reveal");
    typed = code.toLowerCase();
    const type = async () => {
      await page.fill("#code", "");
      await page.locator("#code").pressSequentially(typed, { delay: 2 });
    };
    // Reload in the middle: after the code opened everything, before the
    // new password. The report stays queued; the code works again.
    await type();
    const begun = await page.evaluate(() => window.sdk.recoverBegin());
    await page.reload();
    const reloaded = await load();
    await type();
    const res = await page.evaluate((pw) => window.sdk.recover(pw), fixture.new_password);
    return { typed: await page.inputValue("#code"), pendingBeforeReload: begun.pending, begun: begun.session, afterReload: reloaded.session, ...res };
  });
  await scenario("back online", async () => {
    await browser.setOffline(false);
    const flushed = await page.evaluate(() => window.sdk.online());
    const after = await page.evaluate((c) => window.sdk.pullAfterRecovery(c), typed);
    return { ...flushed, ...after };
  });
  await scenario("stale key", () => page.evaluate(() => window.sdk.stale()));
  await scenario("hostile", () => page.evaluate(() => window.sdk.hostile()));
  const rounds = Number(process.env.ESCROWD_BENCH_ROUNDS || "3");
  await scenario("bench", () => page.evaluate(([r]) => window.sdk.bench(r, [1024, 65536]), [rounds]));
  await scenario("logout", () => page.evaluate(() => window.sdk.logout()));
} catch (e) {
  out.errors.run = e && e.stack ? e.stack : String(e);
} finally {
  if (browser) await browser.close().catch(() => {});
  await rm(profile, { recursive: true, force: true });
}
// Large output: exit only once stdout has taken all of it.
process.stdout.write(JSON.stringify(out) + "\n", () => process.exit(Object.keys(out.errors).length ? 1 : 0));
