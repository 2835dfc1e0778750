// The transition table and the key machine: unit tests in Node.
// Run: node --test clients/web/test/*.test.mjs
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadState } from "../scripts/load-state.mjs";
import { ManualClock, deferred, settle } from "./fakes.mjs";

const S = await loadState();
const { TRANSITIONS, STATES, next, KeyMachine, StateError, memoryMarkers } = S;

const EVENTS = ["unlock", "succeed", "fail", "cancel", "interrupted", "retry", "lock", "idle", "fault", "logout", "enrol", "remote-unlock", "remote-lock", "remote-logout"];

test("table: one row per (state, event), states and events known", () => {
  const seen = new Set();
  for (const t of TRANSITIONS) {
    assert.ok(STATES.includes(t.from), t.from);
    assert.ok(STATES.includes(t.to), t.to);
    assert.ok(EVENTS.includes(t.event), t.event);
    assert.ok(t.why.length > 10, "every row says why");
    const k = t.from + " " + t.event;
    assert.ok(!seen.has(k), "duplicate row " + k);
    seen.add(k);
  }
  for (const e of EVENTS) assert.ok(TRANSITIONS.some((t) => t.event === e), "event without a row: " + e);
});

test("table: next() is the table, and nothing else", () => {
  for (const s of STATES) {
    for (const e of EVENTS) {
      const row = TRANSITIONS.find((t) => t.from === s && t.event === e);
      assert.equal(next(s, e), row?.to, s + " " + e);
    }
  }
});

test("table: every state reachable, every state but wiped can log out, wiped leaves only by enrol", () => {
  const reach = new Set(["locked", "wiped"]);
  for (let changed = true; changed; ) {
    changed = false;
    for (const t of TRANSITIONS) if (reach.has(t.from) && !reach.has(t.to)) reach.add(t.to), (changed = true);
  }
  assert.deepEqual([...reach].sort(), [...STATES].sort());
  for (const s of STATES) {
    if (s === "wiped") continue;
    assert.equal(next(s, "logout"), "wiped", s + " logout");
    assert.equal(next(s, "remote-logout"), "wiped", s + " remote-logout");
  }
  assert.deepEqual(TRANSITIONS.filter((t) => t.from === "wiped").map((t) => t.event), ["enrol"]);
  // failed offers retry or logout (and dismissal, and another tab's unlock).
  assert.deepEqual(TRANSITIONS.filter((t) => t.from === "failed").map((t) => t.event).sort(), ["lock", "logout", "remote-logout", "remote-unlock", "retry"]);
  // Keys are only ever held in unlocked: no row leaves unlocked to unlocking.
  assert.equal(next("unlocked", "unlock"), undefined);
});

/** A machine whose unlock work is controlled by the test. */
function rig(opts = {}) {
  const calls = [];
  const dropped = [];
  const m = new KeyMachine({
    scope: "device",
    marker: opts.marker ?? memoryMarkers(),
    clock: opts.clock,
    idleMs: opts.idleMs,
    drop: (h) => dropped.push(h),
    unlock: (secret, signal) => {
      const d = deferred();
      calls.push({ secret, signal, ...d });
      return d.promise;
    },
  });
  const changes = [];
  m.on((c) => changes.push(c.from + " -" + c.event + "-> " + c.to));
  return { m, calls, changes, dropped };
}

test("machine: unlock, keys, lock", async () => {
  const { m, calls, changes, dropped } = rig();
  assert.equal(m.state, "locked");
  const p = m.unlock("pw");
  assert.equal(m.state, "unlocking");
  assert.equal(calls[0].secret, "pw");
  calls[0].resolve({ k: 1 });
  await p;
  assert.equal(m.state, "unlocked");
  assert.deepEqual(m.keys(), { k: 1 });
  m.lock();
  assert.equal(m.state, "locked");
  assert.deepEqual(dropped, [{ k: 1 }]);
  assert.deepEqual(changes, ["locked -unlock-> unlocking", "unlocking -succeed-> unlocked", "unlocked -lock-> locked"]);
});

test("machine: a decryption failure fails with its code and message; retry or logout", async () => {
  const { m, calls, changes } = rig();
  const wrong = Object.assign(new Error("Wrong password or passkey."), { code: "wrong-secret" });
  const p = m.unlock("bad");
  calls[0].reject(wrong);
  await assert.rejects(p, (e) => e === wrong);
  assert.equal(m.state, "failed");
  assert.equal(m.failure.code, "wrong-secret");
  assert.equal(m.failure.message, "Wrong password or passkey.");
  const r = m.unlock("good");
  assert.equal(m.state, "unlocking");
  assert.equal(m.failure, undefined);
  calls[1].reject(Object.assign(new Error("The slot is damaged."), { code: "damaged" }));
  await assert.rejects(r);
  assert.equal(m.failure.code, "damaged");
  m.logout();
  assert.equal(m.state, "wiped");
  assert.throws(() => m.keys(), (e) => e instanceof StateError && e.code === "wiped");
  assert.deepEqual(changes, ["locked -unlock-> unlocking", "unlocking -fail-> failed", "failed -retry-> unlocking", "unlocking -fail-> failed", "failed -logout-> wiped"]);
});

test("failureOf: a coded error's message without its log detail; others generic", () => {
  const { failureOf } = S;
  class DeviceError extends Error {
    constructor(code, message, detail) {
      super(message + (detail ? " (" + detail + ")" : ""));
      this.code = code;
      this.detail = detail;
    }
  }
  const cases = [
    [new DeviceError("wrong-secret", "Wrong password or passkey.", "slot 2 of 3"), "wrong-secret", "Wrong password or passkey."],
    [new DeviceError("damaged", "The copy of the key is damaged.", ""), "damaged", "The copy of the key is damaged."],
    [Object.assign(new Error("Plain (kept)"), { code: "offline" }), "offline", "Plain (kept)"],
    [Object.assign(new Error(""), { code: "limit" }), "limit", "Unlock failed."],
    [new DOMException("The operation failed for an operation-specific reason", "OperationError"), "unlock-failed", "Unlock failed."],
    [new Error("secret text"), "unlock-failed", "Unlock failed."],
    ["a string", "unlock-failed", "Unlock failed."],
    [null, "unlock-failed", "Unlock failed."],
    [{ code: 7, message: "numeric code" }, "unlock-failed", "Unlock failed."],
  ];
  for (const [err, code, message] of cases) {
    const f = failureOf(err);
    assert.equal(f.code, code, String(err));
    assert.equal(f.message, message, String(err));
    assert.equal(f.cause, err);
  }
});

test("machine: an error without a code shows a generic message, not its text", async () => {
  const { m, calls } = rig();
  const p = m.unlock("pw");
  calls[0].reject(new TypeError("internal detail 0xdeadbeef"));
  await assert.rejects(p);
  assert.equal(m.failure.code, "unlock-failed");
  assert.equal(m.failure.message, "Unlock failed.");
});

test("machine: a dismissed prompt (AbortError) returns to locked without a failure", async () => {
  const { m, calls } = rig();
  const p = m.unlock("pw");
  calls[0].reject(new DOMException("The operation was aborted.", "AbortError"));
  await assert.rejects(p, (e) => e instanceof StateError && e.code === "aborted");
  assert.equal(m.state, "locked");
  assert.equal(m.failure, undefined);
});

test("machine: lock during unlock aborts the work and drops its late result", async () => {
  const { m, calls, dropped } = rig();
  const p = m.unlock("pw");
  m.lock();
  assert.equal(m.state, "locked");
  assert.equal(calls[0].signal.aborted, true);
  calls[0].resolve({ late: true });
  await assert.rejects(p, (e) => e instanceof StateError && e.code === "aborted");
  assert.equal(m.state, "locked");
  assert.deepEqual(dropped, [{ late: true }]);
});

test("machine: another tab's unlock wins over a running one", async () => {
  const { m, calls, dropped } = rig();
  const p = m.unlock("pw");
  assert.equal(m.adopt({ from: "tab B" }), true);
  assert.equal(m.state, "unlocked");
  assert.equal(calls[0].signal.aborted, true);
  calls[0].resolve({ mine: true });
  await p; // resolves: the machine is unlocked, by the other tab
  assert.deepEqual(m.keys(), { from: "tab B" });
  assert.deepEqual(dropped, [{ mine: true }]);
});

test("case: reload during unlock lands in failed/interrupted once, then locked", async () => {
  const marker = memoryMarkers();
  const before = rig({ marker });
  before.m.unlock("hunter2-secret").catch(() => {});
  assert.equal(before.m.state, "unlocking");
  const stored = marker.get("escrowd.unlocking.device");
  assert.ok(stored, "a marker is written while unlocking");
  assert.ok(!stored.includes("hunter2"), "the marker holds no secret");
  // The reload: a new document, the same tab's sessionStorage.
  const after = rig({ marker });
  assert.equal(after.m.state, "failed");
  assert.equal(after.m.failure.code, "interrupted");
  assert.throws(() => after.m.keys(), (e) => e.code === "locked");
  assert.equal(marker.get("escrowd.unlocking.device"), null, "the marker is consumed");
  const again = rig({ marker });
  assert.equal(again.m.state, "locked", "a second reload shows a plain lock screen");
  // From failed/interrupted the user retries with the secret.
  const p = after.m.unlock("hunter2-secret");
  after.calls[0].resolve({ k: 2 });
  await p;
  assert.equal(after.m.state, "unlocked");
  assert.equal(marker.get("escrowd.unlocking.device"), null, "no marker outlives its unlock");
});

test("case: reload in a pending step (recovery) lands in failed/interrupted with the step", async () => {
  const marker = memoryMarkers();
  const before = rig({ marker });
  assert.throws(() => before.m.pending("recovery"), (e) => e.code === "locked");
  const p = before.m.unlock("AB12-CD34-EF56-GH78");
  before.calls[0].resolve({ k: 1 });
  await p;
  assert.throws(() => before.m.pending("Recovery!"), TypeError);
  assert.throws(() => before.m.pending(""), TypeError);
  const done = before.m.pending("recovery");
  const stored = marker.get("escrowd.unlocking.device");
  assert.ok(!stored.includes("AB12") && !stored.toLowerCase().includes("ab12"), "no code in the marker");
  const after = rig({ marker });
  assert.equal(after.m.state, "failed");
  assert.equal(after.m.failure.code, "interrupted");
  assert.equal(after.m.failure.step, "recovery");
  assert.equal(after.m.failure.message, "The recovery was interrupted. Please start it again.");
  // Ended: a reload is a plain lock screen.
  const d2 = before.m.pending("recovery");
  d2();
  assert.equal(rig({ marker }).m.state, "locked");
  // A step ended by a later one's end does not clear the later marker.
  const d3 = before.m.pending("recovery");
  done(); // the first, stale, ender
  assert.notEqual(marker.get("escrowd.unlocking.device"), null);
  // Leaving unlocked ends the step.
  before.m.lock();
  assert.equal(marker.get("escrowd.unlocking.device"), null);
  d3();
  // Markers this code did not write are read as a plain interrupted unlock.
  for (const bad of ["{", "null", '{"step":"<b>x</b>"}', '{"step":7}', '"recovery"']) {
    marker.set("escrowd.unlocking.device", bad);
    const m = rig({ marker }).m;
    assert.equal(m.failure.code, "interrupted", bad);
    assert.equal(m.failure.step, undefined, bad);
    assert.equal(m.failure.message, "Unlocking was interrupted. Please unlock again.", bad);
  }
});

test("case: a key never derived fails at once with locked, or waits until unlocked", async () => {
  const { m, calls } = rig();
  assert.throws(() => m.keys(), (e) => e instanceof StateError && e.code === "locked" && e.state === "locked");
  const waiting = m.whenUnlocked();
  const ac = new AbortController();
  const cancelled = m.whenUnlocked(ac.signal);
  ac.abort();
  await assert.rejects(cancelled, (e) => e.code === "aborted");
  const p = m.unlock("pw");
  assert.throws(() => m.keys(), (e) => e.code === "locked" && e.state === "unlocking");
  calls[0].resolve({ k: 3 });
  await p;
  assert.deepEqual(await waiting, { k: 3 });
  const gone = (() => {
    m.lock();
    return m.whenUnlocked();
  })();
  m.logout();
  await assert.rejects(gone, (e) => e.code === "wiped");
});

test("machine: idle lock after idleMs without activity, activity from anywhere pushes it back", async () => {
  const clock = new ManualClock();
  const { m, calls, changes } = rig({ clock, idleMs: 60_000 });
  const p = m.unlock("pw");
  calls[0].resolve({ k: 1 });
  await p;
  clock.advance(59_999);
  assert.equal(m.state, "unlocked");
  m.keys(); // use counts as activity
  clock.advance(59_999);
  assert.equal(m.state, "unlocked");
  m.noteActivity(clock.now()); // another tab's activity
  clock.advance(30_000);
  m.noteActivity(clock.now() - 90_000); // an old report changes nothing
  clock.advance(29_999);
  assert.equal(m.state, "unlocked");
  clock.advance(1);
  assert.equal(m.state, "locked");
  assert.equal(changes.at(-1), "unlocked -idle-> locked");
  assert.equal(clock.timers.length, 0, "no timer left behind");
});

test("machine: calls that make no sense are refused; remote ones are ignored", async () => {
  const { m, calls } = rig();
  assert.throws(() => m.enrol(), (e) => e.code === "invalid-transition");
  assert.throws(() => m.fault(new Error("x")), (e) => e.code === "invalid-transition");
  assert.equal(m.remoteLock(), false);
  m.lock(); // a no-op when locked
  const p = m.unlock("pw");
  await assert.rejects(m.unlock("pw"), (e) => e.code === "invalid-transition");
  assert.equal(m.remoteLock(), false, "another tab's lock does not stop this tab's unlock");
  calls[0].resolve({ k: 1 });
  await p;
  m.fault(Object.assign(new Error("A newer key will not open."), { code: "damaged" }));
  assert.equal(m.state, "failed");
  assert.equal(m.failure.code, "damaged");
  m.logout();
  m.logout(); // a no-op when wiped
  m.enrol();
  assert.equal(m.state, "locked");
});

test("machine: a throwing subscriber does not stop the others", async () => {
  const clock = new ManualClock();
  const { m, changes } = rig({ clock });
  m.on(() => {
    throw new Error("subscriber bug");
  });
  const seen = [];
  m.on((c) => seen.push(c.to));
  m.unlock("pw").catch(() => {});
  assert.deepEqual(seen, ["unlocking"]);
  assert.equal(changes.length, 1);
  assert.equal(clock.timers.length, 1, "the error is rethrown asynchronously");
  await settle(1);
});
