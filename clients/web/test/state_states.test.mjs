// DeviceStates: the device and group machines together, several tabs on one
// channel bus, one writer per group under (fake) Web Locks, and the rule
// that no write uses a group key older than the newest stored.
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadState } from "../scripts/load-state.mjs";
import { FakeLocks, ManualClock, bus, deferred, settle, waitFor } from "./fakes.mjs";

const { DeviceStates, StateError, memoryMarkers, assertShareable } = await loadState();

/** Storage shared by the tabs of one origin: a version per group, a counter per group, and a wipe. */
function origin() {
  return { versions: new Map(), counters: new Map(), wipes: 0, locks: new Locks(), bus: bus() };
}
class Locks extends FakeLocks {}

/** A tab: a DeviceStates whose unlock checks the password "pw" and whose group keys carry a version. */
function tab(o, opts = {}) {
  const store = {
    newest: async (g) => o.versions.get(g),
    raise: async (g, v) => void o.versions.set(g, v),
  };
  const opened = [];
  const d = new DeviceStates({
    unlock: async (secret) => {
      await settle(1);
      if (secret !== "pw") throw Object.assign(new Error("Wrong password or passkey."), { code: "wrong-secret" });
      return { device: "dk" };
    },
    openGroup: async (id, dk) => {
      opened.push(id);
      assert.deepEqual(dk, { device: "dk" });
      if (id === "nokey") throw Object.assign(new Error("You have no key for this group."), { code: "not-enrolled" });
      return { group: id, version: opts.version?.(id) ?? o.versions.get(id) ?? 1 };
    },
    groupVersion: (gk) => gk.version,
    versions: store,
    wipe: async () => {
      o.wipes++;
      o.versions.clear();
      o.counters.clear();
    },
    channel: o.bus.make(),
    locks: o.locks,
    marker: memoryMarkers(),
    share: { device: { toWire: (h) => ({ ...h }), fromWire: (w) => w }, ...(opts.shareGroup === false ? {} : { group: { toWire: (h) => ({ ...h }), fromWire: (w) => w } }) },
    ...(opts.clock ? { clock: opts.clock, idleMs: opts.idleMs } : {}),
    ...(opts.role ? { role: opts.role } : {}),
  });
  const events = [];
  d.on((e) => events.push(e.type === "state" ? e.change.scope + ":" + e.change.to : "version:" + e.group + "=" + e.version));
  return Object.assign(d, { events, opened });
}

const states = (d) => [d.state, ...d.groups().map((g) => g + "=" + d.group(g).state)].join(" ");

test("device: one unlock opens every group; a group that cannot open fails alone", async () => {
  const o = origin();
  o.versions.set("a", 1).set("b", 1);
  const d = tab(o);
  d.group("a");
  d.group("b");
  d.group("nokey");
  await d.unlock("pw");
  assert.equal(states(d), "unlocked a=unlocked b=unlocked nokey=failed");
  assert.equal(d.group("nokey").failure.code, "not-enrolled");
  assert.deepEqual(d.group("a").keys(), { group: "a", version: 1 });
  d.group("late"); // added while unlocked: opens at once
  await d.settled();
  assert.equal(d.group("late").state, "unlocked");
  d.lock();
  assert.equal(states(d), "locked a=locked b=locked nokey=locked late=locked");
  assert.throws(() => d.group("a").keys(), (e) => e instanceof StateError && e.code === "locked");
  await assert.rejects(d.write("a", async () => 1), (e) => e.code === "locked");
  d.close();
});

test("device: a wrong password fails the device, not the groups; retry unlocks all", async () => {
  const o = origin();
  const d = tab(o);
  d.group("a");
  await assert.rejects(d.unlock("nope"), (e) => e.code === "wrong-secret");
  assert.equal(states(d), "failed a=locked");
  assert.equal(d.machine.failure.message, "Wrong password or passkey.");
  await d.unlock("pw");
  assert.equal(states(d), "unlocked a=unlocked");
  d.close();
});

test("tabs: unlock, lock and logout in one tab reach the others", async () => {
  const o = origin();
  o.versions.set("a", 1);
  const A = tab(o);
  const B = tab(o);
  A.group("a");
  B.group("a");
  await A.unlock("pw");
  await settle();
  assert.equal(states(B), "unlocked a=unlocked");
  assert.deepEqual(B.machine.keys(), { device: "dk" });
  A.lock();
  await settle();
  assert.equal(states(B), "locked a=locked");
  // A tab started later asks; an unlocked tab answers.
  await B.unlock("pw");
  const C = tab(o);
  C.group("a");
  await settle();
  await C.settled();
  assert.equal(states(C), "unlocked a=unlocked");
  assert.equal(states(A), "unlocked a=unlocked");
  await C.logout();
  await settle();
  for (const d of [A, B, C]) assert.equal(states(d), "wiped a=wiped");
  assert.equal(o.wipes, 1, "only the tab that logs out deletes storage");
  for (const d of [A, B, C]) d.close();
});

test("tabs: what crosses is checked: no raw bytes, no extractable key", async () => {
  assert.throws(() => assertShareable({ k: new Uint8Array(32) }), (e) => e.code === "unshareable" && /value\.k: raw bytes/.test(e.message));
  assert.throws(() => assertShareable([{ b: new ArrayBuffer(8) }]), (e) => e.code === "unshareable");
  assert.throws(() => assertShareable({ d: new DataView(new ArrayBuffer(1)) }), (e) => e.code === "unshareable");
  assert.throws(() => assertShareable(new Map([["k", new Uint16Array(1)]])), (e) => e.code === "unshareable");
  assert.throws(() => assertShareable({ f: () => 1 }), (e) => e.code === "unshareable");
  assert.throws(() => assertShareable({ d: new Date() }), (e) => e.code === "unshareable");
  const ext = await crypto.subtle.generateKey({ name: "AES-GCM", length: 256 }, true, ["encrypt"]);
  const non = await crypto.subtle.generateKey({ name: "AES-GCM", length: 256 }, false, ["encrypt"]);
  assert.throws(() => assertShareable({ key: ext }), (e) => e.code === "unshareable" && /extractable/.test(e.message));
  assertShareable({ key: non, version: 3, id: "g", list: [non], m: new Map([["a", 1]]) });
  let deep = {};
  for (let i = 0; i < 20; i++) deep = { deep };
  assert.throws(() => assertShareable(deep), (e) => e.code === "unshareable");
  // A codec that leaks bytes: the unlock succeeds in its tab, nothing is posted.
  const o = origin();
  const A = tab(o);
  A.close();
  const leaky = new DeviceStates({
    unlock: async () => ({ raw: new Uint8Array([1, 2, 3]) }),
    openGroup: async () => ({}),
    groupVersion: () => 1,
    versions: { newest: async () => 1, raise: async () => {} },
    wipe: async () => {},
    channel: o.bus.make(),
    locks: o.locks,
    marker: memoryMarkers(),
    clock: new ManualClock(),
    share: { device: { toWire: (h) => h, fromWire: (w) => w } },
  });
  const refused = [];
  leaky.on((e) => e.type === "share-refused" && refused.push(e.error.code));
  const B = tab(o);
  await settle(); // B's hello is answered by nobody: leaky is locked
  const before = o.bus.sent.length;
  await leaky.unlock("x");
  await settle();
  assert.equal(leaky.state, "unlocked");
  assert.equal(o.bus.sent.slice(before).filter((m) => m.t === "unlocked").length, 0);
  assert.deepEqual(refused, ["unshareable"]);
  assert.equal(B.state, "locked");
  leaky.close();
  B.close();
});

test("tabs: an asynchronous codec posts non-extractable keys, not after a lock", async () => {
  const o = origin();
  o.versions.set("a", 1);
  const gate = deferred();
  let cWired = false;
  const mk = (extra) => new DeviceStates({
    unlock: async () => ({ n: 1 }),
    openGroup: async () => ({ v: 1 }),
    groupVersion: (g) => g.v,
    versions: { newest: async () => 1, raise: async () => {} },
    wipe: async () => {},
    channel: o.bus.make(),
    locks: o.locks,
    marker: memoryMarkers(),
    share: { device: {
      toWire: async (h) => {
        await extra?.();
        const key = await crypto.subtle.generateKey({ name: "AES-GCM", length: 128 }, false, ["encrypt"]);
        if (extra) cWired = true;
        return { n: h.n, key };
      },
      fromWire: (w) => {
        assert.equal(w.key.extractable, false);
        return { n: w.n, key: w.key };
      },
    } },
  });
  const A = mk();
  const B = mk();
  await A.unlock("x");
  await waitFor(() => B.state === "unlocked", 5000, "B to adopt A's keys");
  assert.equal(B.machine.keys().key.type, "secret");
  // A slow codec whose tab locks before it settles posts nothing.
  A.lock();
  await waitFor(() => B.state === "locked", 5000, "B to lock");
  const C = mk(() => gate.promise); // created once every tab is locked: its hello gets no keys
  await settle();
  const before = o.bus.sent.length;
  await C.unlock("x");
  C.lock();
  gate.resolve();
  await waitFor(() => cWired, 5000, "C's codec to settle");
  await settle();
  assert.equal(o.bus.sent.slice(before).filter((m) => m.t === "unlocked").length, 0);
  for (const d of [A, B, C]) d.close();
});

test("tabs: messages of another shape are ignored", async () => {
  const o = origin();
  const A = tab(o);
  const raw = o.bus.make();
  A.group("a");
  for (const m of [null, 1, "logout", {}, { v: 2, t: "logout", from: "x" }, { v: 1, t: "logout" }, { v: 1, t: "logout", from: "" },
    { v: 1, t: "locked", from: "x" }, { v: 1, t: "unlocked", from: "x", scope: 3 }, { v: 1, t: "version", from: "x", group: "a", version: 0 },
    { v: 1, t: "version", from: "x", group: "a", version: 1.5 }, { v: 1, t: "nuke", from: "x" }]) raw.postMessage(m);
  await settle();
  assert.equal(states(A), "locked a=locked");
  assert.deepEqual(A.events, []);
  raw.postMessage({ v: 1, t: "logout", from: "x" });
  await settle();
  assert.equal(A.state, "wiped");
  A.close();
});

test("logout waits for the writes under way; writes after it fail wiped, in every tab", async () => {
  const o = origin();
  o.versions.set("a", 1);
  o.counters.set("a", 0);
  const A = tab(o);
  const B = tab(o);
  A.group("a");
  B.group("a");
  await A.unlock("pw");
  await settle();
  const inWrite = deferred();
  const release = deferred();
  const w = B.write("a", async () => {
    inWrite.resolve();
    await release.promise;
    o.counters.set("a", o.counters.get("a") + 1);
    return "written";
  });
  await inWrite.promise;
  // B's next write is queued behind the running one; A logs out meanwhile.
  const queued = B.write("a", async () => "must not run");
  const out = A.logout();
  await settle();
  assert.equal(B.state, "wiped", "B dropped its keys as soon as the message came");
  assert.equal(o.wipes, 0, "the wipe waits for the write under way");
  release.resolve();
  assert.equal(await w, "written");
  await out;
  assert.equal(o.wipes, 1);
  await assert.rejects(queued, (e) => e.code === "wiped" || e.code === "locked");
  await assert.rejects(B.write("a", async () => 1), (e) => e.code === "wiped");
  A.close();
  B.close();
});

test("a write granted after the wipe fails even before its tab heard of the logout", async () => {
  const o = origin();
  o.versions.set("a", 1);
  const B = tab(o);
  B.group("a");
  await B.unlock("pw");
  o.versions.clear(); // another tab's wipe, message not yet delivered
  await assert.rejects(B.write("a", async () => assert.fail("ran")), (e) => e.code === "wiped");
  B.close();
});

test("concurrent writes from two tabs to one group lose nothing", async () => {
  const o = origin();
  o.versions.set("a", 1);
  o.counters.set("a", 0);
  const A = tab(o);
  const B = tab(o);
  A.group("a");
  B.group("a");
  await A.unlock("pw");
  await settle();
  const inc = (d) => d.write("a", async () => {
    const v = o.counters.get("a");
    await settle(1); // read, yield, write: lost updates without the lock
    o.counters.set("a", v + 1);
  });
  await Promise.all(Array.from({ length: 40 }, (_, i) => inc(i % 2 ? A : B)));
  assert.equal(o.counters.get("a"), 40);
  // The control: the same increments without the lock lose updates.
  o.counters.set("a", 0);
  await Promise.all(Array.from({ length: 40 }, async () => {
    const v = o.counters.get("a");
    await settle(1);
    o.counters.set("a", v + 1);
  }));
  assert.ok(o.counters.get("a") < 40, "the control lost updates: " + o.counters.get("a"));
  A.close();
  B.close();
});

test("no tab writes with a group key older than the newest stored or announced", async () => {
  const o = origin();
  o.versions.set("a", 1);
  let bVersion = 1;
  const A = tab(o, { version: () => 2, shareGroup: false }); // A opens the rotated GDK 2
  const B = tab(o, { version: () => bVersion, shareGroup: false }); // B still opens GDK 1
  A.group("a");
  B.group("a");
  await B.unlock("pw");
  await settle();
  await A.settled();
  assert.equal(A.group("a").keys().version, 2);
  assert.equal(B.group("a").keys().version, 1);
  await A.write("a", async () => "A wrote with v2");
  assert.equal(o.versions.get("a"), 2, "the newer version is stored under the lock");
  // B has not yet received the announcement: the check under the lock refuses anyway.
  bVersion = 2; // what B's unlock work will open next time
  await assert.rejects(B.write("a", async () => assert.fail("wrote with v1")), (e) => e.code === "stale-key");
  // The refusal reopened B's group at the newest version; the retry goes through.
  assert.equal((await B.group("a").whenUnlocked()).version, 2);
  assert.equal(await B.write("a", async (k) => k.version), 2);
  await settle();
  assert.ok(B.events.includes("version:a=2"));
  // Once announced, an old handle is refused before it even queues for the lock.
  const C = tab(o, { version: () => 1, shareGroup: false });
  C.group("a");
  await settle();
  await C.settled();
  assert.equal(C.group("a").keys().version, 1);
  await A.publishVersion("a", 3);
  await settle();
  assert.equal(C.knownVersion("a"), 3);
  assert.equal(o.versions.get("a"), 3);
  await C.settled();
  assert.equal(C.group("a").keys().version, 1, "C can still open only GDK 1");
  await assert.rejects(C.write("a", async () => assert.fail("wrote with v1")), (e) => e.code === "stale-key");
  for (const d of [A, B, C]) d.close();
});

test("the idle lock counts activity in every tab and locks them all", async () => {
  const o = origin();
  const clock = new ManualClock();
  const A = tab(o, { clock, idleMs: 60_000 });
  const B = tab(o, { clock, idleMs: 60_000 });
  A.group("a");
  B.group("a");
  await A.unlock("pw");
  await settle();
  assert.equal(states(B), "unlocked a=unlocked");
  clock.advance(50_000);
  B.touch(); // the user works in B
  await settle();
  clock.advance(50_000);
  assert.equal(A.state, "unlocked", "B's activity kept A open");
  assert.equal(B.state, "unlocked");
  clock.advance(10_000);
  await settle();
  assert.equal(states(A), "locked a=locked");
  assert.equal(states(B), "locked a=locked");
  A.close();
  B.close();
});

test("a background DeviceStates (service worker) never shares its keys and follows only logout and versions", async () => {
  const o = origin();
  o.versions.set("a", 1);
  const A = tab(o);
  const W = tab(o, { role: "background" });
  A.group("a");
  W.group("a");
  await A.unlock("pw");
  await settle();
  assert.equal(W.state, "locked", "the worker does not take a page's keys");
  await W.unlock("pw"); // in a real worker: the device key, no user
  A.lock();
  await settle();
  assert.equal(states(W), "unlocked a=unlocked", "a page's lock does not stop background work");
  const C = tab(o);
  C.group("a");
  await settle();
  assert.equal(C.state, "locked", "a new page gets nothing from the worker");
  assert.equal(o.bus.sent.filter((m) => m.from === W.tab && m.t !== "version").length, 0, "the worker posted nothing but versions");
  o.versions.set("a", 1);
  await W.publishVersion("a", 2);
  await settle();
  assert.equal(A.knownVersion("a"), 2, "versions cross from the worker");
  await C.logout();
  await settle();
  assert.equal(states(W), "wiped a=wiped", "logout reaches the worker");
  for (const d of [A, C, W]) d.close();
});

test("logout in a tab already wiped by another does not wipe again", async () => {
  const o = origin();
  const A = tab(o);
  const B = tab(o);
  await A.logout();
  await settle();
  assert.equal(B.state, "wiped");
  await B.logout();
  assert.equal(o.wipes, 1);
  A.close();
  B.close();
});

test("watchActivity touches the device on input events until stopped", async () => {
  const { watchActivity } = await loadState();
  const target = new EventTarget();
  let n = 0;
  const stop = watchActivity({ touch: () => n++ }, target);
  target.dispatchEvent(new Event("keydown"));
  target.dispatchEvent(new Event("pointerdown"));
  target.dispatchEvent(new Event("scroll"));
  stop();
  target.dispatchEvent(new Event("keydown"));
  assert.equal(n, 2);
});

test("refreshGroup opens a group that failed once a sync brought its key", async () => {
  const o = origin();
  o.versions.set("a", 1);
  let has = false;
  const d = new DeviceStates({
    unlock: async () => ({ dk: 1 }),
    openGroup: async (id) => {
      if (!has) throw Object.assign(new Error("You have no key for this group."), { code: "not-enrolled" });
      return { id, version: 1 };
    },
    groupVersion: (g) => g.version,
    versions: { newest: async () => 1, raise: async () => {} },
    wipe: async () => {},
    channel: null,
    locks: o.locks,
    marker: memoryMarkers(),
  });
  await assert.rejects(d.refreshGroup("a"), (e) => e.code === "locked", "the device is locked");
  d.group("a");
  await d.unlock("x");
  assert.equal(d.group("a").failure.code, "not-enrolled");
  await assert.rejects(d.refreshGroup("a"), (e) => e.code === "not-enrolled");
  has = true;
  await d.refreshGroup("a");
  assert.deepEqual(d.keys("a"), { id: "a", version: 1 });
  // A group first named while the device is unlocked: refreshGroup waits for its opening.
  await d.refreshGroup("b");
  assert.equal(d.group("b").state, "unlocked");
  has = false;
  await assert.rejects(d.refreshGroup("c"), (e) => e.code === "not-enrolled");
  assert.throws(() => d.keys("nope"), (e) => e.code === "locked");
  d.close();
});

test("past the idle deadline no key is handed out, even before the timer fires", async () => {
  const o = origin();
  const clock = new ManualClock();
  const d = tab(o, { clock, idleMs: 60_000 });
  d.group("a");
  await d.unlock("pw");
  clock.t += 60_000; // time passes; the throttled timer has not run
  assert.throws(() => d.keys("a"), (e) => e.code === "locked");
  assert.equal(states(d), "locked a=locked");
  await assert.rejects(d.write("a", async () => assert.fail("wrote")), (e) => e.code === "locked");
  d.close();
});

test("answering another tab's hello is not activity: it does not keep this tab open", async () => {
  const o = origin();
  const clock = new ManualClock();
  const A = tab(o, { clock, idleMs: 60_000 });
  await A.unlock("pw");
  clock.advance(50_000);
  const B = tab(o, { clock, idleMs: 60_000 });
  await settle();
  assert.equal(B.state, "unlocked", "B got A's keys");
  clock.advance(10_000);
  assert.equal(A.state, "locked", "A locked on time despite answering B");
  A.close();
  B.close();
});
