// Drives the demo PWA in headless Chromium (Debian's /usr/bin/chromium,
// through playwright-core from web/node_modules) for e2e/pwa_flows_test.go:
// the app-level flows of a device that holds its keys encrypted at rest.
// A reload in the middle of a password unlock leaves the app locked, with
// nothing written, and it unlocks; a note whose record was altered in
// IndexedDB (AES-GCM refuses it) shows "retry or log out", and Retry
// brings it back from the backend; two tabs of the app, and Log out in one
// (from that message) logs out both, their stores gone. Prints one JSON
// object; saves a screenshot at each step, named flows-NN-….
//
//   PLAYWRIGHT_DIR=web/node_modules node flows.mjs APP_URL SHOTS_DIR
import { createRequire } from "node:module";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

const require = createRequire(join(process.env.PLAYWRIGHT_DIR ?? "", "x.js"));
const { chromium } = require("playwright-core");
const [app, shots] = process.argv.slice(2);
const account = "ann", password = "ann's password for the flows 4d2e";
const note = "the flows note: pick up the parcel at 5";
const out = { steps: [], console: [], timings: {}, secrets: [password, note] };
let browser, page, other, n = 0;

const shot = (name, p = page) => p.screenshot({ path: join(shots, "flows-" + String(++n).padStart(2, "0") + "-" + name.replace(/[^a-z0-9]+/gi, "-") + ".png") });
const step = async (name, fn) => {
  const t0 = Date.now();
  try {
    const r = await fn();
    out.steps.push({ name, ok: true, ...(r && typeof r === "object" ? r : {}) });
  } catch (e) {
    out.steps.push({ name, ok: false, error: String((e && e.stack) || e) });
    throw e;
  } finally {
    out.timings[name] = Date.now() - t0;
  }
};
const visible = (sel, p = page, timeout = 15000) => p.waitForSelector(sel, { state: "visible", timeout });
const hasNote = (p, t) => p.waitForFunction((t) => [...document.querySelectorAll("#notes li")].some((li) => li.textContent === t), t, { timeout: 15000 });
const waitSynced = (since, p = page) => p.waitForFunction((t) => {
  const s = document.getElementById("sync");
  return s.dataset.state === "synced" && s.dataset.pending === "0" && Number(s.dataset.round ?? 0) > t;
}, since, { timeout: 20000 });
const now = (p = page) => p.evaluate(() => Date.now());

// In the page: every store of the origin's IndexedDB databases as text, and
// (all: true) localStorage, sessionStorage and Cache Storage too.
const dump = (p, all) => p.evaluate(async (all) => {
  const parts = [];
  const names = (await indexedDB.databases()).map((d) => d.name).sort();
  for (const name of names) {
    const db = await new Promise((res, rej) => { const r = indexedDB.open(name); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
    for (const s of [...db.objectStoreNames].sort()) {
      const rows = await new Promise((res, rej) => { const r = db.transaction(s).objectStore(s).getAll(); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
      parts.push(name + "/" + s + " " + JSON.stringify(rows, (_, v) => (v instanceof Uint8Array ? Array.from(v) : v instanceof CryptoKey ? "CryptoKey " + v.type + " " + v.extractable : v)));
    }
    db.close();
  }
  if (all) {
    parts.push(JSON.stringify({ ...localStorage }), JSON.stringify({ ...sessionStorage }));
    for (const k of await caches.keys()) {
      const c = await caches.open(k);
      for (const req of await c.keys()) parts.push(await (await c.match(req)).text());
    }
  }
  return { names, text: parts.join("\n") };
}, all);

// tamper flips one byte of a note's AES-GCM ciphertext in IndexedDB: the
// record still parses, and its tag no longer verifies.
const tamper = (p, group) => p.evaluate(async (group) => {
  const db = await new Promise((res, rej) => { const r = indexedDB.open("escrowd-pwa"); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
  const rows = await new Promise((res, rej) => { const r = db.transaction("records").objectStore("records").getAll(); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
  const row = rows.find((r) => r.group === group && !r.id.startsWith("member-"));
  const rec = JSON.parse(row.record);
  const ct = Uint8Array.from(atob(rec.ct), (c) => c.charCodeAt(0));
  ct[0] ^= 1;
  rec.ct = btoa(String.fromCharCode(...ct));
  await new Promise((res, rej) => { const tx = db.transaction("records", "readwrite"); tx.objectStore("records").put({ ...row, record: JSON.stringify(rec) }); tx.oncomplete = res; tx.onerror = () => rej(tx.error); });
  db.close();
  return row.id;
}, group);

const launch = {
  executablePath: "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"],
};
const profile = await mkdtemp(join(tmpdir(), "escrowd-pwa-flows-"));
try {
  browser = await chromium.launchPersistentContext(profile, launch);
  page = await browser.newPage();
  page.on("console", (m) => out.console.push(m.type() + ": " + m.text()));
  page.on("pageerror", (e) => out.console.push("pageerror: " + e.message));

  await step("sign up and write a note", async () => {
    await page.goto(app);
    await visible("#signup");
    await page.fill("#su-account", account);
    await page.fill("#su-password", password);
    await page.click("#signup button[type=submit]");
    await visible("#main", page, 30000);
    await page.evaluate(() => navigator.serviceWorker.ready);
    await page.fill("#gn-name", "ann-notes");
    await page.click("#group-new button[type=submit]");
    await visible("#groups li[data-group=ann-notes]");
    await page.click("#groups li[data-group=ann-notes]");
    const t = await now();
    await page.fill("#note-text", note);
    await page.click("#note-save");
    await hasNote(page, note);
    await waitSynced(t);
    await shot("signed-up-with-a-note");
  });

  await step("reload during unlock", async () => {
    // The page is reloaded right after the unlock is submitted, while the
    // PBKDF2 of the password slot runs. If the unlock ended first (the page
    // then says nothing), it is tried again: the step needs one reload
    // that lands in the middle.
    await page.click("#lock");
    await visible("#login");
    let attempts = 0, interrupted = false, code = null, before, after;
    while (!interrupted && attempts < 5) {
      attempts++;
      before = await dump(page, false);
      await page.fill("#li-password", password);
      await Promise.all([
        page.waitForNavigation({ waitUntil: "load", timeout: 15000 }),
        page.evaluate(() => {
          document.querySelector("#login button[type=submit]").click();
          location.reload();
        }).catch(() => {}),
      ]);
      await page.waitForFunction(() => document.body.dataset.ready === "true", null, { timeout: 15000 });
      code = await page.evaluate(() => (document.getElementById("error").hidden ? null : document.getElementById("error").dataset.code));
      interrupted = code === "interrupted";
      after = await dump(page, false);
      if (!interrupted && (await page.isVisible("#main"))) {
        await page.click("#lock");
        await visible("#login");
      }
    }
    const login = await page.isVisible("#login");
    const message = await page.textContent("#error");
    await shot("reloaded-in-the-middle-of-the-unlock");
    const marker = await page.evaluate(() => sessionStorage.getItem("escrowd-pwa-unlocking"));
    await page.fill("#li-password", password);
    await page.click("#login button[type=submit]");
    await visible("#main");
    await page.click("#groups li[data-group=ann-notes]");
    await hasNote(page, note);
    await shot("unlocked-again");
    return { attempts, interrupted, login, message, unchanged: before.text === after.text, dumpBytes: before.text.length, marker };
  });

  let tampered = "";
  await step("decryption failure: retry", async () => {
    tampered = await tamper(page, "ann-notes");
    await page.click("#groups li[data-group=ann-notes]");
    await visible("#failure");
    const message = await page.textContent("#failure-text");
    const code = await page.getAttribute("#failure", "data-code");
    const noteError = await page.getAttribute(`#notes li[data-id="${tampered}"]`, "data-error");
    await shot("a-note-does-not-decrypt-retry-or-log-out");
    const t = await now();
    await page.click("#failure-retry");
    await waitSynced(t);
    await page.waitForSelector("#failure", { state: "hidden", timeout: 15000 });
    await hasNote(page, note);
    await shot("retry-fetched-the-note-again");
    return { message, code, noteError };
  });

  await step("storage holds no secret", async () => {
    const d = await dump(page, true);
    return { dumpBytes: d.text.length, found: out.secrets.filter((s) => d.text.includes(s) || d.text.toLowerCase().includes(s.toLowerCase())) };
  });

  await step("two tabs", async () => {
    other = await browser.newPage();
    other.on("pageerror", (e) => out.console.push("pageerror (tab 2): " + e.message));
    await other.goto(app);
    await visible("#login", other);
    await other.fill("#li-password", password);
    await other.click("#login button[type=submit]");
    await visible("#main", other);
    await other.click("#groups li[data-group=ann-notes]");
    await hasNote(other, note);
    await shot("a-second-tab-unlocked", other);
  });

  await step("decryption failure: log out, in both tabs", async () => {
    // The first tab comes to the front (a hidden page draws no screenshot)
    // and syncs, so that no round started by its visibility repairs the
    // record after it is altered.
    await page.bringToFront();
    const t = await now();
    await page.click("#sync-now");
    await waitSynced(t);
    // Offline from here to the logout: the second tab shares the database,
    // and a round it starts (its visibility changed) would fetch the note
    // again and repair it under the bar. The logout needs no connection.
    await browser.setOffline(true);
    await tamper(page, "ann-notes");
    await page.click("#groups li[data-group=ann-notes]");
    await visible("#failure");
    await shot("the-note-does-not-decrypt-again");
    await page.click("#failure-logout");
    await visible("#signup");
    await visible("#signup", other);
    await other.waitForFunction(() => document.getElementById("error").dataset.code === "logged-out");
    const notice = await other.textContent("#error");
    // Online again: a sync either tab or the worker starts now finds no
    // device and brings no database back.
    await browser.setOffline(false);
    await shot("logged-out-in-the-first-tab");
    await other.bringToFront();
    await shot("the-second-tab-follows", other);
    const left = await dump(other, false);
    const local = await other.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith("escrowd-pwa")));
    const mainHidden = await other.isHidden("#main");
    const keysGone = await other.evaluate(() => document.getElementById("notes").children.length === 0 || document.getElementById("main").hidden);
    // A reload of the second tab finds no account; neither tab's storage
    // (IndexedDB, localStorage, sessionStorage, Cache Storage) holds a secret.
    await other.reload();
    await visible("#signup", other);
    const d = (await dump(page, true)).text + "\n" + (await dump(other, true)).text;
    const found = out.secrets.filter((s) => d.includes(s) || d.toLowerCase().includes(s.toLowerCase()));
    return { notice, databases: left.names, local, mainHidden, keysGone, found, dumpBytes: d.length };
  });
} catch {
  // The failed step is in out.steps.
} finally {
  await browser?.close().catch(() => {});
  await rm(profile, { recursive: true, force: true });
  console.log(JSON.stringify(out));
}
