// The SDK's DeviceSession in Debian's Chromium (never a downloaded
// browser), two pages of one context on the real key hierarchy and record
// store: unlock, lock and logout in one reach the other; concurrent record
// writes to one group from both pages under the Web Lock lose nothing; a
// reload in the middle of an unlock lands in failed (interrupted). After
// every scenario no password, key or plaintext is in IndexedDB, Cache
// Storage, localStorage or sessionStorage. A missing Chromium or
// playwright-core fails the test.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { access, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { bundle, webDir } from "../scripts/load-state.mjs";

const CHROMIUM = "/usr/bin/chromium";
const PLAYWRIGHT = join(webDir, "..", "..", "web", "node_modules", "playwright-core", "index.mjs");
const PASSWORD = "correct horse battery staple 7f3a";
const GROUPS = ["g1", "g2"];

const NOTE = "plaintext note 5c1e"; // in every record's plaintext (test/state/page.ts)
let server, browser, profile, A, B, base;
let keys = []; // the GDKs the enrolling page made, hex and base64
const consoles = [];

before(async () => {
  await access(CHROMIUM).catch(() => assert.fail(CHROMIUM + " is missing: run `make deps` (Debian's chromium)"));
  await access(PLAYWRIGHT).catch(() => assert.fail("web/node_modules/playwright-core is missing: run `make deps` (npm ci --prefix web)"));
  const { chromium } = await import(pathToFileURL(PLAYWRIGHT).href);
  const js = await bundle("test/state/page.ts", "browser");
  server = createServer((req, res) => {
    if (req.url === "/page.js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(js);
    } else if (req.url === "/") {
      res.writeHead(200, { "content-type": "text/html" }).end('<!doctype html><meta charset="utf-8"><title>state</title><script type="module" src="/page.js"></script>');
    } else res.writeHead(req.url === "/favicon.ico" ? 204 : 404).end();
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  base = "http://localhost:" + server.address().port + "/";
  profile = await mkdtemp(join(tmpdir(), "escrowd-chromium-"));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  });
  A = await browser.newPage();
  B = await browser.newPage();
  for (const [n, p] of [["A", A], ["B", B]]) {
    p.on("console", (m) => consoles.push(n + " " + m.type() + ": " + m.text()));
    p.on("pageerror", (e) => consoles.push(n + " pageerror: " + e.message));
  }
});

after(async () => {
  await browser?.close().catch(() => {});
  server?.close();
  if (profile) await rm(profile, { recursive: true, force: true });
  if (consoles.length) console.log(consoles.join("\n"));
});

/** Loads the page in p and starts its DeviceStates. */
async function load(p, idleMs = 0) {
  await p.goto(base);
  await p.waitForFunction(() => window.ready === true);
  return p.evaluate(([g, ms]) => window.t.start(g, ms), [GROUPS, idleMs]);
}
const state = (p) => p.evaluate(() => window.t.state());
const until = (p, fn, arg) => p.waitForFunction(fn, arg, { timeout: 10_000 });
const all = (dev, grp) => ({ device: dev, groups: Object.fromEntries(GROUPS.map((g) => [g, grp])) });
const pick = (s) => ({ device: s.device, groups: s.groups });

async function assertNoSecrets(p) {
  const { text } = await p.evaluate(() => window.t.dump());
  assert.ok(!text.includes(PASSWORD), "the password is not stored");
  assert.ok(!text.includes("correct horse"), "no part of the password is stored");
  assert.ok(!text.includes(NOTE), "no record plaintext is stored");
  assert.ok(keys.length > 0);
  for (const k of keys) assert.ok(!text.includes(k), "no GDK is stored");
}
const enrol = async (p) => (keys = await p.evaluate(([pw, g]) => window.t.enrol(pw, g), [PASSWORD, GROUPS]));

test("browser: unlock in one page reaches the other; a wrong password fails only there", async () => {
  await A.goto(base);
  await A.waitForFunction(() => window.ready === true);
  await enrol(A);
  assert.deepEqual(pick(await load(A)), all("locked", "locked"));
  assert.deepEqual(pick(await load(B)), all("locked", "locked"));

  assert.deepEqual(await A.evaluate(() => window.t.unlock("not the password")), { ok: false, code: "wrong-secret" });
  const s = await state(A);
  assert.equal(s.device, "failed");
  assert.equal(s.failure, "wrong-secret");
  assert.equal(s.message, "Wrong password or passkey.");
  assert.equal((await state(B)).device, "locked", "a failure stays in its tab");
  assert.equal(await B.evaluate(() => window.t.keysError("g1")), "locked", "a key never derived: refused at once");

  assert.deepEqual(await A.evaluate((pw) => window.t.unlock(pw), PASSWORD), { ok: true });
  assert.deepEqual(pick(await state(A)), all("unlocked", "unlocked"));
  await until(B, () => Object.values(window.t.state().groups).every((s) => s === "unlocked"));
  assert.deepEqual(pick(await state(B)), all("unlocked", "unlocked"));
  // B reads with the non-extractable record keys A posted: it never saw the
  // password, and holds no GDK.
  assert.equal(await B.evaluate(() => window.t.read("g1")), 0);
  assert.equal(await A.evaluate(() => window.t.holdsGDK("g1")), true);
  assert.equal(await B.evaluate(() => window.t.holdsGDK("g1")), false);
  const ev = await B.evaluate(() => window.t.events);
  assert.ok(ev.includes("device locked remote-unlock unlocked remote"), ev.join("\n"));
  await assertNoSecrets(A);
  await assertNoSecrets(B);
});

test("browser: concurrent writes to one group from both pages lose nothing", async () => {
  const N = 25;
  const [ea, eb] = await Promise.all([A.evaluate((n) => window.t.incr("g1", n, true), N), B.evaluate((n) => window.t.incr("g1", n, true), N)]);
  assert.deepEqual([ea, eb], [[], []]);
  assert.equal(await A.evaluate(() => window.t.read("g1")), 2 * N);
  assert.equal(await B.evaluate(() => window.t.read("g1")), 2 * N);
  // The control: the same increments on g2 without the lock lose updates,
  // so the count above is the lock's doing.
  await Promise.all([A.evaluate((n) => window.t.incr("g2", n, false), N), B.evaluate((n) => window.t.incr("g2", n, false), N)]);
  const lost = await A.evaluate(() => window.t.read("g2"));
  assert.ok(lost < 2 * N, "without the lock the counter lost updates: " + lost);
  console.log("without the lock: " + lost + " of " + 2 * N + " increments kept");
  // The dump sees the record store (the checks below are not vacuous).
  const { names, text } = await A.evaluate(() => window.t.dump());
  assert.deepEqual(names, ["escrowd-state-test"]);
  assert.ok(text.includes('"id":"counter"') && text.includes('"records"'), "the dump holds the counter records");
  await assertNoSecrets(A);
  await assertNoSecrets(B);
});

test("browser: lock in one page locks the other; unlock there reaches back", async () => {
  await A.evaluate(() => window.t.lock());
  assert.deepEqual(pick(await state(A)), all("locked", "locked"));
  await until(B, () => window.t.state().device === "locked");
  assert.deepEqual(pick(await state(B)), all("locked", "locked"));
  assert.equal(await B.evaluate(() => window.t.writeError("g1")), "locked");
  assert.deepEqual(await B.evaluate((pw) => window.t.unlock(pw), PASSWORD), { ok: true });
  await until(A, () => Object.values(window.t.state().groups).every((s) => s === "unlocked"));
  assert.equal(await A.evaluate(() => window.t.read("g1")), 50);
  await assertNoSecrets(A);
});

test("browser: a reloaded page gets the keys of an unlocked one", async () => {
  assert.deepEqual(pick(await load(A)), all("locked", "locked"));
  await until(A, () => Object.values(window.t.state().groups).every((s) => s === "unlocked"));
  assert.equal(await A.evaluate(() => window.t.read("g1")), 50);
});

test("browser: logout in one page locks and wipes both", async () => {
  await B.evaluate(() => window.t.logout());
  assert.deepEqual(pick(await state(B)), all("wiped", "wiped"));
  await until(A, () => window.t.state().device === "wiped");
  assert.deepEqual(pick(await state(A)), all("wiped", "wiped"));
  assert.equal(await A.evaluate(() => window.t.keysError("g1")), "wiped");
  assert.equal(await A.evaluate(() => window.t.writeError("g1")), "wiped");
  for (const p of [A, B]) {
    const { names } = await p.evaluate(() => window.t.dump());
    assert.deepEqual(names, [], "the device's database is deleted");
    await assertNoSecrets(p);
  }
  // A page loaded after the logout starts wiped.
  assert.deepEqual(pick(await load(A)), all("wiped", "wiped"));
});

test("browser: reload in the middle of an unlock lands in failed (interrupted), then retry", async () => {
  await enrol(A);
  await load(A);
  await load(B);
  assert.equal(await A.evaluate((pw) => window.t.unlockHeld(pw), PASSWORD), "unlocking");
  const marker = (await state(A)).marker;
  assert.ok(marker && !marker.includes("correct"), "a marker without the secret: " + marker);
  await A.reload();
  await A.waitForFunction(() => window.ready === true);
  const s = await A.evaluate((g) => window.t.start(g), GROUPS);
  assert.deepEqual(pick(s), all("failed", "locked"));
  assert.equal(s.failure, "interrupted");
  assert.equal(s.message, "Unlocking was interrupted. Please unlock again.");
  assert.equal(s.marker, null, "the marker is consumed");
  assert.deepEqual(pick(await state(B)), all("locked", "locked"), "the other page is untouched");
  // Retry from failed: both pages open.
  assert.deepEqual(await A.evaluate((pw) => window.t.unlock(pw), PASSWORD), { ok: true });
  await until(B, () => Object.values(window.t.state().groups).every((s) => s === "unlocked"));
  assert.equal(await B.evaluate(() => window.t.read("g1")), 0);
  // A second reload, not in an unlock, is a plain locked page that the other page reopens.
  const again = await load(A);
  assert.equal(again.failure, null);
  await until(A, () => window.t.state().device === "unlocked");
  await assertNoSecrets(A);
  await assertNoSecrets(B);
});

test("browser: reload in the middle of a recovery lands in failed (interrupted, recovery); another page's keys then arrive", async () => {
  await A.evaluate(() => window.t.lock());
  await until(B, () => window.t.state().device === "locked");
  // The keys are open; the step DeviceSession.recover marks between the
  // code's unlock and the new password's slots is pending. (The recovery
  // with a real code, against the daemon, is e2e/browser_sdk_test.go.)
  const mid = await A.evaluate((pw) => window.t.unlockPending(pw, "recovery"), PASSWORD);
  assert.equal(mid.device, "unlocked");
  assert.ok(mid.marker && mid.marker.includes('"step":"recovery"') && !mid.marker.includes("correct"), mid.marker);
  await until(B, () => window.t.state().device === "unlocked");
  await A.reload();
  await A.waitForFunction(() => window.ready === true);
  const s = await A.evaluate((g) => window.t.start(g), GROUPS);
  assert.equal(s.device, "failed", "the state right after the reload, before any other page answers");
  assert.equal(s.failure, "interrupted");
  assert.equal(s.step, "recovery");
  assert.equal(s.message, "The recovery was interrupted. Please start it again.");
  assert.equal(s.marker, null);
  // B is unlocked: its keys reach A, which the app has already told to ask for the new password again.
  await until(A, () => window.t.state().device === "unlocked");
  // Finished this time: a reload shows no failure.
  assert.ok((await A.evaluate(() => window.t.markRecovery())).marker.includes("recovery"));
  await A.evaluate(() => window.t.endRecovery());
  assert.equal((await state(A)).marker, null);
  assert.equal((await load(A)).failure, null);
  await assertNoSecrets(A);
  await assertNoSecrets(B);
});

test("browser: the idle lock counts activity in either page and then locks both", async () => {
  const IDLE = 2000;
  await A.evaluate(() => window.t.lock());
  await until(B, () => window.t.state().device === "locked");
  await load(A, IDLE);
  await load(B, IDLE);
  assert.deepEqual(await A.evaluate((pw) => window.t.unlock(pw), PASSWORD), { ok: true });
  await until(B, () => window.t.state().device === "unlocked");
  // The user works in B only, for longer than the idle time: A stays open.
  const t0 = Date.now();
  while (Date.now() - t0 < IDLE * 1.5) {
    await B.evaluate(() => window.t.touch());
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.equal((await state(A)).device, "unlocked", "B's activity kept A open");
  // Then nobody does anything: both lock, A by its timer, B by its own.
  const t1 = Date.now();
  await until(A, () => window.t.state().device === "locked");
  await until(B, () => window.t.state().device === "locked");
  const waited = Date.now() - t1;
  assert.ok(waited >= IDLE * 0.5, "locked after " + waited + " ms, not at once");
  assert.deepEqual(pick(await state(A)), all("locked", "locked"));
  const ev = await A.evaluate(() => window.t.events);
  assert.ok(ev.includes("device unlocked idle locked local") || ev.includes("device unlocked remote-lock locked remote"), ev.join("\n"));
  await assertNoSecrets(A);
  await assertNoSecrets(B);
});
