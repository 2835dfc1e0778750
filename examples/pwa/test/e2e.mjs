// Drives the demo PWA in headless Chromium (Debian's /usr/bin/chromium,
// through playwright-core from web/node_modules) for e2e/pwa_test.go:
// sign up, a group, a note, an offline reload and a password unlock, then
// the forgotten password: the code support reveals, typed in lower case
// with dashes while offline, a new password, the old one refused, the
// consumed report sent once online, and support's notice shown.
// Prints one JSON object; saves a screenshot at each step.
//
//   PLAYWRIGHT_DIR=web/node_modules node e2e.mjs APP_URL CONTROL_URL SHOTS_DIR
import { createRequire } from "node:module";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

const require = createRequire(join(process.env.PLAYWRIGHT_DIR ?? "", "x.js"));
const { chromium } = require("playwright-core");
const [app, control, shots] = process.argv.slice(2);
const account = "ann", password = "first password, soon forgotten", newPassword = "the second password, after support";
const note = "buy milk, eggs and the 7:40 train tickets";
const bobNote = "bob: the boiler man comes on Thursday";
const laterNote = "ann, later: the spare key is with the neighbour";
const out = { steps: [], console: [], timings: {}, secrets: [password, newPassword, note, bobNote, laterNote] };
let page, browser, bobBrowser, n = 0;

const step = async (name, fn) => {
  const t0 = Date.now();
  try {
    const r = await fn();
    out.steps.push({ name, ok: true, ...(r && typeof r === "object" ? r : {}) });
  } catch (e) {
    out.steps.push({ name, ok: false, error: String(e && e.stack || e) });
    throw e;
  } finally {
    out.timings[name] = Date.now() - t0;
    if (page) await shot(name).catch(() => {});
  }
};
const shot = (name) => page.screenshot({ path: join(shots, String(++n).padStart(2, "0") + "-" + name.replace(/[^a-z0-9]+/gi, "-") + ".png") });
const visible = (sel, timeout = 15000) => page.waitForSelector(sel, { state: "visible", timeout });
const text = (sel) => page.textContent(sel);
const syncState = async () => {
  await page.waitForFunction(() => document.getElementById("sync").dataset.state !== "syncing");
  return page.getAttribute("#sync", "data-state");
};
// now is the page's clock; waitSynced waits for a round with nothing
// pending that started after since (a round begun before an action may
// not carry it).
const now = (p = page) => p.evaluate(() => Date.now());
const waitSynced = async (since = 0, p = page) => {
  await p.waitForFunction((t) => {
    const s = document.getElementById("sync");
    return s.dataset.state === "synced" && s.dataset.pending === "0" && Number(s.dataset.round ?? 0) > t;
  }, since, { timeout: 20000 });
};
const unlock = async (pw) => {
  await visible("#login");
  await page.fill("#li-password", pw);
  await page.click("#login button[type=submit]");
};

const launch = {
  executablePath: "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"],
};
const profiles = [await mkdtemp(join(tmpdir(), "escrowd-pwa-"))];
try {
  browser = await chromium.launchPersistentContext(profiles[0], launch);
  page = await browser.newPage();
  page.on("console", (m) => out.console.push(m.type() + ": " + m.text()));
  page.on("pageerror", (e) => out.console.push("pageerror: " + e.message));

  await step("sign up", async () => {
    await page.goto(app);
    await visible("#signup");
    await page.fill("#su-account", account);
    await page.fill("#su-password", password);
    await shot("the sign-up form");
    await page.click("#signup button[type=submit]");
    await visible("#main", 30000);
    await page.evaluate(() => navigator.serviceWorker.ready);
    return { sync: await syncState() };
  });
  await step("create a group", async () => {
    await page.fill("#gn-name", "ann-notes");
    await page.click("#group-new button[type=submit]");
    await visible("#groups li[data-group=ann-notes]");
    await page.click("#groups li[data-group=ann-notes]");
    await visible("#group");
    return { meta: await text("#group-meta") };
  });
  await step("write a note", async () => {
    const t = await now();
    await page.fill("#note-text", note);
    await page.click("#note-save");
    await page.waitForFunction((t) => [...document.querySelectorAll("#notes li")].some((li) => li.textContent === t), note);
    await waitSynced(t);
    return { sync: await text("#sync") };
  });
  // Bob, on his own device (another Chromium profile), becomes Ann's surrogate.
  let bob;
  const bobPassword = "bob's own password, never shared";
  out.secrets.push(bobPassword);
  await step("bob signs up on his device", async () => {
    const bobProfile = await mkdtemp(join(tmpdir(), "escrowd-pwa-bob-"));
    profiles.push(bobProfile);
    bobBrowser = await chromium.launchPersistentContext(bobProfile, launch);
    bob = await bobBrowser.newPage();
    bob.on("pageerror", (e) => out.console.push("pageerror (bob): " + e.message));
    await bob.goto(app);
    await bob.waitForSelector("#signup", { state: "visible" });
    await bob.fill("#su-account", "bob");
    await bob.fill("#su-password", bobPassword);
    await bob.click("#signup button[type=submit]");
    await bob.waitForSelector("#main", { state: "visible", timeout: 30000 });
    await bob.screenshot({ path: join(shots, String(++n).padStart(2, "0") + "-bob-signed-up.png") });
  });
  await step("ann adds bob as a surrogate", async () => {
    const t = await now();
    await page.fill("#ma-account", "bob");
    await page.click("#member-add button[type=submit]");
    await page.waitForFunction(() => document.getElementById("ma-account").value === "" || !document.getElementById("error").hidden);
    await waitSynced(t);
    return { error: (await page.isVisible("#error")) ? await text("#error") : "" };
  });
  await step("bob reads ann's note", async () => {
    await bob.click("#sync-now");
    await bob.waitForSelector("#groups li[data-group=ann-notes]", { state: "visible", timeout: 20000 });
    await bob.click("#groups li[data-group=ann-notes]");
    await bob.waitForFunction((t) => [...document.querySelectorAll("#notes li")].some((li) => li.textContent === t), note);
    await bob.screenshot({ path: join(shots, String(++n).padStart(2, "0") + "-bob-reads-ann-s-note.png") });
    return { meta: await bob.textContent("#group-meta"), groupLine: await bob.textContent("#groups li[data-group=ann-notes]") };
  });
  await step("bob writes in ann's group, ann reads it", async () => {
    const tb = await now(bob);
    await bob.fill("#note-text", bobNote);
    await bob.click("#note-save");
    await waitSynced(tb, bob);
    const deadline = Date.now() + 20000;
    for (;;) {
      const t = await now();
      await page.click("#sync-now");
      await waitSynced(t);
      if (await page.evaluate((t) => [...document.querySelectorAll("#notes li")].some((li) => li.textContent === t), bobNote)) break;
      if (Date.now() > deadline) throw new Error("ann does not see bob's note");
      await page.waitForTimeout(300);
    }
  });
  await step("bob's device syncs in the background", async () => {
    // Bob's page leaves the app (a page of the origin that runs no app
    // code), so only the service worker can sync: the DevTools Protocol
    // fires its periodic sync, which opens the device with the device key.
    const countAt = (p) => p.evaluate(async () => {
      const db = await new Promise((res, rej) => { const r = indexedDB.open("escrowd-pwa"); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
      const all = await new Promise((res, rej) => { const r = db.transaction("records").objectStore("records").getAll(); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
      db.close();
      return all.filter((r) => r.group === "ann-notes").length;
    });
    await bob.goto(new URL("icon.svg", app).href);
    const before = await countAt(bob);
    const t = await now();
    await page.fill("#note-text", laterNote);
    await page.click("#note-save");
    await page.waitForFunction((t) => [...document.querySelectorAll("#notes li")].some((li) => li.textContent === t), laterNote);
    await waitSynced(t);
    const cdp = await bobBrowser.newCDPSession(bob);
    const regs = [];
    cdp.on("ServiceWorker.workerRegistrationUpdated", (e) => regs.push(...e.registrations));
    await cdp.send("ServiceWorker.enable");
    const t0 = Date.now();
    while (!regs.length && Date.now() - t0 < 5000) await bob.waitForTimeout(100);
    const reg = regs.find((r) => !r.isDeleted);
    if (!reg) throw new Error("bob's service worker is not registered");
    await cdp.send("ServiceWorker.dispatchPeriodicSyncEvent", { origin: new URL(app).origin, registrationId: reg.registrationId, tag: "escrowd-sync" });
    let after = before;
    while (after === before && Date.now() - t0 < 20000) {
      await bob.waitForTimeout(200);
      after = await countAt(bob);
    }
    // Then Bob opens the app and unlocks: the note the worker fetched opens.
    await bob.goto(app);
    await bob.waitForSelector("#login", { state: "visible" });
    await bob.fill("#li-password", bobPassword);
    await bob.click("#login button[type=submit]");
    await bob.waitForSelector("#groups li[data-group=ann-notes]", { state: "visible" });
    await bob.click("#groups li[data-group=ann-notes]");
    await bob.waitForFunction((t) => [...document.querySelectorAll("#notes li")].some((li) => li.textContent === t), laterNote);
    await bob.screenshot({ path: join(shots, String(++n).padStart(2, "0") + "-bob-reads-the-note-his-worker-fetched.png") });
    return { before, after };
  });
  await step("add a passkey", async () => {
    const cdp = await browser.newCDPSession(page);
    await cdp.send("WebAuthn.enable", { enableUI: false });
    const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", { options: {
      protocol: "ctap2", transport: "internal", hasResidentKey: true, hasUserVerification: true,
      isUserVerified: true, hasPrf: true, automaticPresenceSimulation: true,
    } });
    const t = await now();
    await page.click("#passkey-add");
    await waitSynced(t);
    const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
    return { credentials: credentials.length, error: (await page.isVisible("#error")) ? await text("#error") : "" };
  });
  await step("offline reload and password unlock", async () => {
    await page.waitForFunction(() => navigator.serviceWorker.controller !== null, null, { timeout: 15000 });
    await browser.setOffline(true);
    await page.reload();
    await unlock(password);
    await visible("#main");
    await page.click("#groups li[data-group=ann-notes]");
    await page.waitForFunction((t) => [...document.querySelectorAll("#notes li")].some((li) => li.textContent === t), note);
    return { sync: await syncState(), notes: await page.$$eval("#notes li", (l) => l.map((x) => x.textContent)) };
  });
  await step("offline passkey unlock", async () => {
    await page.click("#lock");
    await visible("#login");
    await page.click("#li-passkey");
    await visible("#main");
    await page.click("#groups li[data-group=ann-notes]");
    await page.waitForFunction((t) => [...document.querySelectorAll("#notes li")].some((li) => li.textContent === t), note);
    return { sync: await syncState() };
  });
  let revealed;
  await step("support reveals a code", async () => {
    const r = await fetch(control + "/reveal");
    if (!r.ok) throw new Error("reveal: " + r.status + " " + (await r.text()));
    revealed = await r.json();
    out.secrets.push(revealed.code);
    return { epoch: revealed.epoch, index: revealed.index };
  });
  await step("forgot password, offline", async () => {
    await page.click("#lock");
    await visible("#login");
    await page.click("#li-forgot");
    await visible("#recover");
    const typed = revealed.code.replace(/[^0-9a-z]/gi, "").toLowerCase().match(/.{1,4}/g).join("-");
    await page.fill("#rc-code", typed);
    await page.fill("#rc-password", newPassword);
    await shot("the code as typed");
    await page.click("#recover button[type=submit]");
    await visible("#main", 20000);
    await page.waitForFunction(() => document.getElementById("sync").dataset.pending === "1");
    return { typed: typed === revealed.code ? "unchanged" : "lower case with dashes", sync: await text("#sync") };
  });
  await step("the old password fails", async () => {
    await page.click("#lock");
    await unlock(password);
    await visible("#error");
    const code = await page.getAttribute("#error", "data-code");
    await shot("the old password refused");
    await unlock(newPassword);
    await visible("#main");
    return { oldPassword: code, error: await text("#error") };
  });
  await step("online: the report is sent", async () => {
    const t = await now();
    await browser.setOffline(false);
    await waitSynced(t);
    return { sync: await text("#sync") };
  });
  await step("support's notice", async () => {
    const deadline = Date.now() + 20000;
    while (!(await page.$("#notices li[data-kind=code_revealed]"))) {
      if (Date.now() > deadline) throw new Error("no notice of the reveal");
      await page.click("#sync-now");
      await page.waitForTimeout(300);
    }
    return { notice: await text("#notices li[data-kind=code_revealed]") };
  });
  await step("storage holds no secret", async () => {
    const dumpOf = (p) => p.evaluate(async () => {
      const parts = [JSON.stringify({ ...localStorage })];
      for (const info of await indexedDB.databases()) {
        const db = await new Promise((res, rej) => { const r = indexedDB.open(info.name); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
        for (const s of db.objectStoreNames) {
          const all = await new Promise((res, rej) => { const r = db.transaction(s).objectStore(s).getAll(); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
          parts.push(JSON.stringify(all, (_, v) => (v instanceof Uint8Array ? Array.from(v) : v)));
        }
        db.close();
      }
      for (const k of await caches.keys()) {
        const c = await caches.open(k);
        for (const req of await c.keys()) parts.push(await (await c.match(req)).text());
      }
      return parts.join("\n");
    });
    await bob.goto(new URL("icon.svg", app).href);
    const dump = (await dumpOf(page)) + "\n" + (await dumpOf(bob));
    return { dumpBytes: dump.length, found: out.secrets.filter((s) => dump.includes(s) || dump.toLowerCase().includes(s.toLowerCase())) };
  });
  await step("bob logs out", async () => {
    await bob.goto(app);
    await bob.waitForSelector("#login", { state: "visible" });
    await bob.fill("#li-password", bobPassword);
    await bob.click("#login button[type=submit]");
    await bob.waitForSelector("#main", { state: "visible" });
    await bob.click("#logout");
    await bob.waitForSelector("#signup", { state: "visible" });
    const names = await bob.evaluate(async () => (await indexedDB.databases()).map((d) => d.name));
    await bob.reload();
    await bob.waitForSelector("#signup", { state: "visible" });
    return { databases: names, local: await bob.evaluate(() => localStorage.length) };
  });
} catch {
  // The failed step is in out.steps.
} finally {
  await browser?.close().catch(() => {});
  await bobBrowser?.close().catch(() => {});
  for (const p of profiles) await rm(p, { recursive: true, force: true });
  console.log(JSON.stringify(out));
}
