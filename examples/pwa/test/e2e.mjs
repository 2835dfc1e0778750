// Drives the demo PWA in headless Chromium (Debian's /usr/bin/chromium,
// through playwright-core from web/node_modules) for e2e/pwa_test.go, with
// three browser profiles: Ann's laptop, Ann's phone and Bob's device.
// Sign up, a group, a note; the phone joins Ann's account, approved from
// the laptop; Bob and Ann become each other's surrogates; the phone's and
// Bob's service workers sync in the background with the device key; Ann
// removes Bob (the GDK rotates): Bob reads nothing new, Ann's devices read
// the old notes through the chain; an offline reload and unlock, a
// passkey; then the forgotten password: the code support reveals with
// escrowctl, typed in lower case with dashes while offline, a new
// password, the old one refused, the consumed report sent once online,
// and support's notice shown. After every step the three profiles'
// storage and the backend's database are searched for the run's secrets.
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
const bobOwnNote = "bob's own: dentist on the 14th";
const annInBobNote = "ann in bob's group: the plumber's number is in the drawer";
const afterNote = "ann, after bob left: the new alarm code is with mum";
const out = { steps: [], console: [], timings: {}, secrets: [password, newPassword, note, bobNote, laterNote, bobOwnNote, annInBobNote, afterNote] };
let page, browser, bobBrowser, phoneBrowser, bob, phone, n = 0;

const step = async (name, fn) => {
  const t0 = Date.now();
  try {
    const r = await fn();
    const ts = Date.now();
    const found = await scan();
    out.timings.scans = (out.timings.scans ?? 0) + Date.now() - ts;
    out.steps.push({ name, ok: true, ...(r && typeof r === "object" ? r : {}), scan: found });
  } catch (e) {
    out.steps.push({ name, ok: false, error: String(e && e.stack || e) });
    throw e;
  } finally {
    out.timings[name] = Date.now() - t0;
    if (page) await shot(name).catch(() => {});
  }
};
const shotOf = (p, name) => p.screenshot({ path: join(shots, String(++n).padStart(2, "0") + "-" + name.replace(/[^a-z0-9]+/gi, "-") + ".png") });
const shot = (name) => shotOf(page, name);
const shows = (p, t, timeout = 40000) => p.waitForFunction((t) => [...document.querySelectorAll("#notes li")].some((li) => li.textContent === t), t, { timeout });
// notesOf is the list of notes once every one of want shows: the list is
// drawn note by note, and a sync may draw it again meanwhile.
const notesOf = async (p, want = []) => (await p.waitForFunction((want) => {
  const l = [...document.querySelectorAll("#notes li")].map((x) => x.textContent);
  return want.every((t) => l.includes(t)) && l;
}, want, { timeout: 40000 })).jsonValue();
const openGroup = async (p, g) => {
  await p.waitForSelector(`#groups li[data-group=${g}]`, { state: "visible", timeout: 40000 });
  await p.click(`#groups li[data-group=${g}]`);
  await p.waitForSelector("#group", { state: "visible" });
};
const unlockOn = async (p, pw) => {
  await p.goto(app);
  await p.waitForSelector("#login", { state: "visible" });
  await p.fill("#li-password", pw);
  await p.click("#login button[type=submit]");
  await p.waitForSelector("#main", { state: "visible", timeout: 20000 });
};
// countAt counts the records of a group in a profile's IndexedDB, read from a page of the origin.
const countAt = (p, group) => p.evaluate(async (group) => {
  const db = await new Promise((res, rej) => { const r = indexedDB.open("escrowd-pwa"); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
  const all = await new Promise((res, rej) => { const r = db.transaction("records").objectStore("records").getAll(); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
  db.close();
  return all.filter((r) => r.group === group).length;
}, group);
// periodicSync fires the service worker's periodic sync through the
// DevTools Protocol, as Chromium does for an installed app.
const periodicSync = async (ctx, p) => {
  const cdp = await ctx.newCDPSession(p);
  const regs = [];
  cdp.on("ServiceWorker.workerRegistrationUpdated", (e) => regs.push(...e.registrations));
  await cdp.send("ServiceWorker.enable");
  const t0 = Date.now();
  while (!regs.length && Date.now() - t0 < 5000) await p.waitForTimeout(100);
  const reg = regs.find((r) => !r.isDeleted);
  if (!reg) throw new Error("no service worker is registered");
  await cdp.send("ServiceWorker.dispatchPeriodicSyncEvent", { origin: new URL(app).origin, registrationId: reg.registrationId, tag: "escrowd-sync" });
  await cdp.detach();
};
// waitCount waits until f() differs from before (the worker's sync landed).
const waitCount = async (p, f, before, timeout = 40000) => {
  const t0 = Date.now();
  let v = await f();
  while (v === before && Date.now() - t0 < timeout) {
    await p.waitForTimeout(200);
    v = await f();
  }
  return v;
};
// dumpOf is every byte a profile keeps for the origin: localStorage, each IndexedDB store, Cache Storage.
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
// scan searches every profile's storage and the backend's database for
// the secrets of the run so far; found names where, by the secret's
// position in out.secrets (never the secret).
const scan = async () => {
  const found = [];
  let browserBytes = 0;
  for (const [who, p] of [["laptop", page], ["phone", phone], ["bob", bob]]) {
    if (!p || !p.url().startsWith(new URL(app).origin)) continue;
    const d = (await dumpOf(p)).toLowerCase();
    browserBytes += d.length;
    out.secrets.forEach((sec, i) => { if (d.includes(sec.toLowerCase())) found.push(who + ":" + i); });
  }
  const r = await fetch(control + "/scan", { method: "POST", body: JSON.stringify(out.secrets) });
  if (!r.ok) throw new Error("scan: " + r.status + " " + (await r.text()));
  const db = await r.json();
  for (const i of db.found) found.push("backend:" + i);
  return { browserBytes, dbBytes: db.bytes, found };
};
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
  }, since, { timeout: 60000 });
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
  // Ann's phone (another Chromium profile) joins her account: it shows a
  // request, the laptop approves it, the phone sends its enrolment.
  let request, approval;
  await step("ann's phone asks to join", async () => {
    const phoneProfile = await mkdtemp(join(tmpdir(), "escrowd-pwa-phone-"));
    profiles.push(phoneProfile);
    phoneBrowser = await chromium.launchPersistentContext(phoneProfile, { ...launch, viewport: { width: 420, height: 860 } });
    phone = await phoneBrowser.newPage();
    phone.on("pageerror", (e) => out.console.push("pageerror (phone): " + e.message));
    await phone.goto(app);
    await phone.waitForSelector("#enrol", { state: "visible" });
    await phone.fill("#en-account", account);
    await phone.click("#en-start");
    await phone.waitForSelector("#en-wait", { state: "visible" });
    request = await phone.inputValue("#en-request");
    await shotOf(phone, "phone-shows-its-request");
    return { fingerprint: await phone.textContent("#en-fingerprint"), request };
  });
  await step("ann approves her phone on her laptop", async () => {
    await page.click("#devices summary");
    await page.fill("#ap-request", request);
    await page.waitForSelector("#ap-fingerprint[data-fingerprint]");
    const fp = await page.getAttribute("#ap-fingerprint", "data-fingerprint");
    await page.click("#approve button[type=submit]");
    await page.waitForSelector("#ap-approval", { state: "visible" });
    approval = await page.inputValue("#ap-approval");
    return { fingerprint: fp, approval };
  });
  await step("ann's phone joins and reads her note", async () => {
    const t = await now(phone);
    await phone.fill("#en-approval", approval);
    await phone.click("#enrol button[type=submit]");
    await phone.waitForSelector("#login", { state: "visible", timeout: 20000 });
    await waitSynced(t, phone);
    await shotOf(phone, "phone-enrolled-and-locked");
    const records = await countAt(phone, "ann-notes");
    await phone.fill("#li-password", password);
    await phone.click("#login button[type=submit]");
    await phone.waitForSelector("#main", { state: "visible", timeout: 20000 });
    await openGroup(phone, "ann-notes");
    await shows(phone, note);
    await shotOf(phone, "phone-reads-ann-s-note");
    await page.click("#devices summary");
    return { meta: await phone.textContent("#group-meta"), notes: await notesOf(phone, [note]), records, sync: await phone.getAttribute("#sync", "data-state") };
  });
  // Bob, on his own device (another Chromium profile), has his own group
  // with Ann as its surrogate, and becomes Ann's surrogate.
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
    await shotOf(bob, "bob-signed-up");
  });
  await step("bob's own group, ann its surrogate", async () => {
    await bob.fill("#gn-name", "bob-notes");
    await bob.click("#group-new button[type=submit]");
    await openGroup(bob, "bob-notes");
    const tb = await now(bob);
    await bob.fill("#note-text", bobOwnNote);
    await bob.click("#note-save");
    await shows(bob, bobOwnNote);
    await waitSynced(tb, bob);
    const tb2 = await now(bob);
    await bob.fill("#ma-account", account);
    await bob.click("#member-add button[type=submit]");
    await bob.waitForSelector("#members li[data-account=ann]", { timeout: 20000 });
    await waitSynced(tb2, bob);
    await shotOf(bob, "bob-adds-ann-to-his-group");
    const t = await now();
    await page.click("#sync-now");
    await waitSynced(t);
    await openGroup(page, "bob-notes");
    await shows(page, bobOwnNote);
    return { meta: await text("#group-meta"), groupLine: await text("#groups li[data-group=bob-notes]") };
  });
  await step("ann adds bob as a surrogate", async () => {
    await openGroup(page, "ann-notes");
    const t = await now();
    await page.fill("#ma-account", "bob");
    await page.click("#member-add button[type=submit]");
    await page.waitForFunction(() => document.getElementById("ma-account").value === "" || !document.getElementById("error").hidden);
    await waitSynced(t);
    return { error: (await page.isVisible("#error")) ? await text("#error") : "" };
  });
  await step("bob reads ann's note", async () => {
    await bob.click("#sync-now");
    await openGroup(bob, "ann-notes");
    await shows(bob, note);
    await shotOf(bob, "bob-reads-ann-s-note");
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
  // Scenario 3: Bob's two groups lock, open and sync each on its own.
  const whileLocked = "ann, while bob's copy was locked: the gate code is 4711";
  const bobWhileLocked = "bob's own, while ann's group is locked: call the garage";
  out.secrets.push(whileLocked, bobWhileLocked);
  await step("bob locks ann's group, his own works on", async () => {
    await openGroup(bob, "ann-notes");
    await shows(bob, bobNote);
    await bob.click("#group-lock");
    await bob.waitForSelector("#group-locked", { state: "visible" });
    await bob.waitForSelector("#groups li[data-group=ann-notes][data-locked=true]");
    const recordsBefore = Number(await bob.getAttribute("#group-locked", "data-records"));
    // Ann writes in her group meanwhile: it reaches Bob's device, encrypted.
    const t = await now();
    await page.fill("#note-text", whileLocked);
    await page.click("#note-save");
    await shows(page, whileLocked);
    await waitSynced(t);
    // Bob reads and writes his own group, and it syncs.
    await openGroup(bob, "bob-notes");
    await shows(bob, bobOwnNote);
    const tb = await now(bob);
    await bob.fill("#note-text", bobWhileLocked);
    await bob.click("#note-save");
    await shows(bob, bobWhileLocked);
    await waitSynced(tb, bob);
    // A sync round on Bob's device brings Ann's new record to the locked group.
    const deadline = Date.now() + 20000;
    let recordsAfter = recordsBefore;
    while (recordsAfter === recordsBefore) {
      if (Date.now() > deadline) throw new Error("the locked group received no record by sync");
      const t2 = await now(bob);
      await bob.click("#sync-now");
      await waitSynced(t2, bob);
      recordsAfter = await countAt(bob, "ann-notes");
    }
    await openGroup(bob, "ann-notes");
    await bob.waitForSelector("#group-locked", { state: "visible" });
    await bob.waitForFunction((n) => document.getElementById("group-locked").dataset.records === String(n), recordsAfter);
    const html = await bob.content();
    const plaintext = [note, bobNote, whileLocked].filter((x) => html.includes(x) || html.includes(x.replace(/'/g, "&#39;")));
    const locked = {
      recordsBefore, recordsAfter, plaintext,
      shownRecords: Number(await bob.getAttribute("#group-locked", "data-records")),
      notesShown: await bob.$$eval("#notes li", (l) => l.length),
      formHidden: await bob.isHidden("#note-form"),
      groupLine: await bob.textContent("#groups li[data-group=ann-notes]"),
      lockedText: await bob.textContent("#group-locked"),
    };
    await shotOf(bob, "bob's copy of ann's group is locked");
    // Ann reads the note Bob wrote in his own group while the other was locked.
    await openGroup(page, "bob-notes");
    const ownDeadline = Date.now() + 20000;
    for (;;) {
      const ta = await now();
      await page.click("#sync-now");
      await waitSynced(ta);
      if (await page.evaluate((t) => [...document.querySelectorAll("#notes li")].some((li) => li.textContent === t), bobWhileLocked)) break;
      if (Date.now() > ownDeadline) throw new Error("ann does not see the note bob wrote in his group");
      await page.waitForTimeout(300);
    }
    await openGroup(page, "ann-notes");
    return { groupLock: locked };
  });
  await step("bob opens ann's group again", async () => {
    await openGroup(bob, "ann-notes");
    await bob.click("#group-open");
    await bob.waitForSelector("#note-form", { state: "visible" });
    const notes = await notesOf(bob, [note, bobNote, whileLocked]);
    await shotOf(bob, "bob opens ann's group again");
    return {
      notes,
      meta: await bob.textContent("#group-meta"),
      groupLine: await bob.textContent("#groups li[data-group=ann-notes]"),
      error: (await bob.isVisible("#error")) ? await bob.textContent("#error") : "",
    };
  });
  await step("ann's phone and bob's device sync in the background", async () => {
    // The phone's and Bob's pages leave the app (a page of the origin that
    // runs no app code), so only their service workers can sync: the
    // DevTools Protocol fires each one's periodic sync, which opens the
    // device with the device key alone. Nobody unlocks either.
    // The phone, open until now, syncs first: then only what Ann writes next is new to it.
    const tp = await now(phone);
    await phone.click("#sync-now");
    await waitSynced(tp, phone);
    const away = new URL("icon.svg", app).href;
    await phone.goto(away);
    await bob.goto(away);
    const before = { phone: await countAt(phone, "ann-notes"), bobAnn: await countAt(bob, "ann-notes"), bobOwn: await countAt(bob, "bob-notes") };
    const t = await now();
    await page.fill("#note-text", laterNote);
    await page.click("#note-save");
    await shows(page, laterNote);
    await waitSynced(t);
    await openGroup(page, "bob-notes");
    const t2 = await now();
    await page.fill("#note-text", annInBobNote);
    await page.click("#note-save");
    await shows(page, annInBobNote);
    await waitSynced(t2);
    await periodicSync(phoneBrowser, phone);
    await periodicSync(bobBrowser, bob);
    const after = {
      phone: await waitCount(phone, () => countAt(phone, "ann-notes"), before.phone),
      bobAnn: await waitCount(bob, () => countAt(bob, "ann-notes"), before.bobAnn),
      bobOwn: await waitCount(bob, () => countAt(bob, "bob-notes"), before.bobOwn),
    };
    // Then each opens the app and unlocks: the notes the workers fetched open.
    await unlockOn(phone, password);
    await openGroup(phone, "ann-notes");
    await shows(phone, laterNote);
    await shotOf(phone, "phone-reads-the-note-its-worker-fetched");
    await unlockOn(bob, bobPassword);
    await openGroup(bob, "bob-notes");
    await shows(bob, annInBobNote);
    await openGroup(bob, "ann-notes");
    await shows(bob, laterNote);
    await shotOf(bob, "bob-reads-the-notes-his-worker-fetched");
    await openGroup(page, "ann-notes");
    return { before: before.bobAnn, after: after.bobAnn, phoneBefore: before.phone, phoneAfter: after.phone, ownBefore: before.bobOwn, ownAfter: after.bobOwn };
  });
  // Ann removes Bob: the backend has escrowd rotate the group's key.
  let afterId;
  await step("ann removes bob", async () => {
    const t = await now();
    await page.click("#members li[data-account=bob] button");
    await page.waitForFunction(() => !document.querySelector("#members li[data-account=bob]"), null, { timeout: 20000 });
    await waitSynced(t);
    const t2 = await now();
    await page.fill("#note-text", afterNote);
    await page.click("#note-save");
    await shows(page, afterNote);
    await waitSynced(t2);
    afterId = await (await page.waitForFunction((t) => [...document.querySelectorAll("#notes li")].find((li) => li.textContent === t)?.dataset.id, afterNote)).jsonValue();
    return { notes: await notesOf(page, [note, afterNote]), error: (await page.isVisible("#error")) ? await text("#error") : "" };
  });
  await step("bob no longer reads new notes", async () => {
    const t = await now(bob);
    await bob.click("#sync-now");
    await waitSynced(t, bob);
    await bob.waitForSelector("#groups li[data-group=ann-notes][data-removed=true]", { timeout: 20000 });
    await openGroup(bob, "ann-notes");
    const synced = await notesOf(bob, [note, bobNote, laterNote]);
    const records = await countAt(bob, "ann-notes");
    // Bob gets the new note's ciphertext anyway (a copy of the backend's
    // database, say): it goes into his device's store, and his app tries
    // to open it with every key his device holds.
    const record = await page.evaluate(async (id) => {
      const db = await new Promise((res, rej) => { const r = indexedDB.open("escrowd-pwa"); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
      const row = await new Promise((res, rej) => { const r = db.transaction("records").objectStore("records").get(["ann-notes", id]); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
      db.close();
      return row.record;
    }, afterId);
    await bob.evaluate(async ({ id, record }) => {
      const db = await new Promise((res, rej) => { const r = indexedDB.open("escrowd-pwa"); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
      await new Promise((res, rej) => { const tx = db.transaction("records", "readwrite"); tx.objectStore("records").put({ group: "ann-notes", id, record }); tx.oncomplete = res; tx.onerror = () => rej(tx.error); });
      db.close();
    }, { id: afterId, record });
    await openGroup(bob, "bob-notes");
    await openGroup(bob, "ann-notes");
    const injected = await (await bob.waitForFunction((id) => {
      const li = document.querySelector(`#notes li[data-id="${id}"]`);
      return li && { text: li.textContent, error: li.dataset.error ?? "" };
    }, afterId, { timeout: 40000 })).jsonValue();
    await shotOf(bob, "bob-cannot-open-the-note-written-after-he-left");
    return {
      meta: await bob.textContent("#group-meta"), groupLine: await bob.textContent("#groups li[data-group=ann-notes]"), notes: synced,
      injected, gdk: JSON.parse(record).gdk_version, records,
    };
  });
  await step("ann's devices read old notes through the chain", async () => {
    // The laptop unlocks again: the new bundle has no slot of the old
    // GDK but its chain slot, so the old notes open through GDK 2.
    await page.click("#lock");
    await unlock(password);
    await visible("#main");
    await openGroup(page, "ann-notes");
    for (const t of [note, bobNote, laterNote, afterNote]) await shows(page, t);
    const laptop = await notesOf(page, [note, bobNote, laterNote, afterNote]);
    // The phone gets the rotation by its worker's periodic sync, then unlocks.
    await phone.click("#lock");
    await phone.goto(new URL("icon.svg", app).href);
    const phoneBefore = await countAt(phone, "ann-notes");
    await periodicSync(phoneBrowser, phone);
    const phoneAfter = await waitCount(phone, () => countAt(phone, "ann-notes"), phoneBefore);
    await unlockOn(phone, password);
    await openGroup(phone, "ann-notes");
    for (const t of [note, bobNote, laterNote, afterNote]) await shows(phone, t);
    await shotOf(phone, "phone-reads-old-and-new-notes");
    return { notes: laptop, phoneNotes: await notesOf(phone, [note, bobNote, laterNote, afterNote]), phoneBefore, phoneAfter };
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
    out.secrets.push(revealed.code, revealed.code.replace(/-/g, ""));
    // What the technician saw: escrowctl's own output, shown as a terminal.
    const term = await browser.newPage();
    await term.setViewportSize({ width: 900, height: 220 });
    await term.setContent("<body style='margin:0;background:#111;color:#ddd;font:15px/1.5 monospace;padding:1rem'><pre style='margin:0;white-space:pre-wrap'></pre></body>");
    await term.$eval("pre", (el, t) => { el.textContent = t; }, "$ " + revealed.command + "\n" + revealed.output);
    await shotOf(term, "escrowctl-codes-reveal");
    await term.close();
    return { epoch: revealed.epoch, index: revealed.index, command: revealed.command };
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
  await step("the old code opens nothing", async () => {
    // The key group now holds the new epoch's slots only: the code support
    // read out, typed again, is refused and changes nothing.
    await page.click("#sync-now");
    await page.waitForFunction(() => document.getElementById("sync").dataset.pending !== "1");
    await page.click("#lock");
    await visible("#login");
    await page.click("#li-forgot");
    await visible("#recover");
    await page.fill("#rc-code", revealed.code);
    out.secrets.push("a third password, never set");
    await page.fill("#rc-password", "a third password, never set");
    await page.click("#recover button[type=submit]");
    await visible("#error");
    const code = await page.getAttribute("#error", "data-code");
    const error = await text("#error");
    await shot("the old code refused");
    await page.goto(app);
    await unlock(newPassword);
    await visible("#main");
    return { oldCode: code, error };
  });
  await step("storage holds no secret", async () => {
    // Bob's and the phone's pages leave the app: their storage at rest.
    await bob.goto(new URL("icon.svg", app).href);
    await phone.goto(new URL("icon.svg", app).href);
    const found = [];
    let dumpBytes = 0;
    for (const [who, p] of [["laptop", page], ["phone", phone], ["bob", bob]]) {
      const d = (await dumpOf(p)).toLowerCase();
      dumpBytes += d.length;
      out.secrets.forEach((sec, i) => { if (d.includes(sec.toLowerCase())) found.push(who + ":" + i); });
    }
    return { dumpBytes, found };
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
  await phoneBrowser?.close().catch(() => {});
  for (const p of profiles) await rm(p, { recursive: true, force: true });
  console.log(JSON.stringify(out));
}
