// The app side of @escrowd/device in the browser test (e2e/browser_sdk_test.go):
// a transport over the test's sync backend (HTTP, relayed to escrowd over
// gRPC), and one function per scenario for the driver (web/sdk_run.mjs).

import {
  Device, DeviceError, DeviceSession, type Transport, type UnlockedKeys, codeOf, createPasskey, hex, newGDK, openRecord, passkeyPRF, prfOf,
  sealPublic, sealRecordRaw, toB64, type PasskeyPRF, parseBundle, parseRecord, encodeRecord, encodeSlot, sealChain,
} from "../../src/index.js";
import { exportGDK, recordKey } from "../../src/gdk.js";
import { encodeBundle, recordAAD } from "../../src/format.js";

interface Fixture {
  new_password: string;
  user: string;
  keyGroup: string;
  deviceId: string;
  password: string;
  escrow: { spki: string; suite: "ecdh-p256" | "rsa-oaep-sha1" | "rsa-oaep-sha256"; version: number };
}

const td = new TextDecoder();
const DB_NAME = "escrowd-test";

async function call(method: string, path: string, body?: unknown): Promise<unknown> {
  let r: Response;
  try {
    r = await fetch(path, { method, headers: { "Content-Type": "application/json" }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  } catch (e) {
    throw new DeviceError("offline", "the sync backend cannot be reached", { cause: e });
  }
  if (!r.ok) throw new Error(method + " " + path + ": " + r.status + " " + (await r.text()));
  return r.status === 204 ? null : r.json();
}

const transport: Transport = {
  async pullBundle(group) {
    return ((await call("GET", "/sync/bundle?group=" + encodeURIComponent(group))) as { bundle: string | null }).bundle;
  },
  async pushBundle(group, bundle) {
    await call("POST", "/sync/bundle?group=" + encodeURIComponent(group), { bundle });
  },
  async pullRecords(group) {
    return (await call("GET", "/sync/records?group=" + encodeURIComponent(group))) as { records: string[] };
  },
  async pushRecords(group, records) {
    await call("POST", "/sync/records?group=" + encodeURIComponent(group), { records });
  },
  async reportConsumedCode(report) {
    await call("POST", "/sync/consumed", report);
  },
  async fetchEnrolments(user) {
    return ((await call("GET", "/sync/enrolments?user=" + encodeURIComponent(user))) as { enrolments: Awaited<ReturnType<Transport["fetchEnrolments"]>> }).enrolments;
  },
};

let fx: Fixture;
let device: Device;
let keys: UnlockedKeys | null = null;
let session: DeviceSession | undefined;

// The page's DeviceSession: made at each load, and again once a user is
// enrolled (a session on a device without a user starts wiped).
async function newSession(): Promise<DeviceSession> {
  session?.close();
  session = await DeviceSession.open({ device, transport });
  return session;
}
function sessionState() {
  const f = session!.states.machine.failure;
  return { state: session!.state, failure: f?.code ?? "", step: f?.step ?? "", marker: sessionStorage.getItem("escrowd.unlocking.device") ?? "" };
}
const secrets: string[] = []; // keys and PRF outputs the page saw, for the storage check

async function remember(k: UnlockedKeys): Promise<void> {
  for (const g of k.groups()) {
    const ring = k.ring(g);
    for (const v of ring.versions()) {
      const raw = await exportGDK(ring.gdk(v)!);
      secrets.push(hex(raw), toB64(raw));
    }
  }
}

async function attempt<T>(fn: () => Promise<T>): Promise<{ ok: true; value: T } | { ok: false; code: string; message: string }> {
  try {
    return { ok: true, value: await fn() };
  } catch (e) {
    const code = codeOf(e);
    if (!code) console.error("unexpected: " + (e instanceof Error ? e.stack : String(e)));
    return { ok: false, code: code || "exception", message: e instanceof Error ? e.message : String(e) };
  }
}

async function readAll(k: UnlockedKeys): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const g of k.groups()) {
    for (const id of await device.recordIds(g)) {
      const pt = await device.getRecord(k, g, id);
      out[g + "/" + id] = pt ? td.decode(pt) : "";
    }
  }
  return out;
}

async function sync() {
  return device.sync(transport, fx.user);
}

const api = {
  // start: the fixture comes from the driver (the page may be offline).
  async start(fixture: Fixture) {
    fx = fixture;
    if (!navigator.serviceWorker.controller) await navigator.serviceWorker.register("/sw.js", { scope: "/" });
    await navigator.serviceWorker.ready;
    device = await Device.open({ name: DB_NAME, deviceId: fx.deviceId });
    await newSession();
    return { persistent: device.persistent, controlled: !!navigator.serviceWorker.controller, session: sessionState() };
  },

  // enrol: a new user on this device; the backend gives the user's groups
  // member and device slots; unlock with the password; read the backend's
  // records (the oldest through the chain) and write one per group.
  async enrol() {
    const b64 = (s: string) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
    const made = await device.createUser(fx.user, fx.keyGroup, fx.password, { ...fx.escrow, spki: b64(fx.escrow.spki) });
    await transport.pushBundle(fx.keyGroup, made.bundle);
    await call("POST", "/sync/enrol", {
      user: fx.user, member_spki: toB64(made.memberPublic), device_spki: toB64(await device.devicePublicKey()),
      member_record: made.memberRecord, commit: hex(made.commit),
    });
    const uk = await exportGDK(made.keys.userKeyRing().newest()!);
    secrets.push(hex(uk), toB64(uk));
    made.keys.lock();
    await sync();
    const t0 = performance.now();
    keys = await device.unlock(fx.user, { password: fx.password });
    const unlockMs = performance.now() - t0;
    await remember(keys);
    const read = await readAll(keys);
    for (const g of keys.groups()) await device.putRecord(keys, g, "page-note", "written by the page in " + g);
    const pushed = await sync();
    return { groups: keys.groups(), versions: Object.fromEntries(keys.groups().map((g) => [g, keys!.ring(g).versions()])), read, unlockMs, pushed };
  },

  // deviceKey: lock, then open every group with the device key alone.
  async deviceKey() {
    const group = keys!.groups()[0]!;
    keys!.lock();
    const afterLock = await attempt(() => device.getRecord(keys!, group, "page-note"));
    const bg = await device.unlockDevice();
    const groups = bg.groups();
    const read = await readAll(bg);
    bg.lock();
    return { afterLock, groups, read };
  },

  // serviceWorker: the service worker opens the groups with the device key
  // alone, while the page holds no key.
  async serviceWorker() {
    const sw = navigator.serviceWorker.controller;
    if (!sw) throw new Error("the page has no service worker");
    const ch = new MessageChannel();
    const reply = new Promise<unknown>((resolve) => {
      ch.port1.onmessage = (e) => resolve(e.data);
    });
    sw.postMessage({ type: "background-sync", db: DB_NAME }, [ch.port2]);
    return reply;
  },

  // passkey: a passkey with PRF (the driver's virtual authenticator) gets a
  // slot of the user key; then, locked, one touch unlocks every group.
  async passkey() {
    keys = await device.unlock(fx.user, { password: fx.password });
    const cred = await createPasskey({ user: { id: crypto.getRandomValues(new Uint8Array(16)), name: fx.user } });
    const seal = prfOf(cred);
    await device.addPasskey(keys, cred, async (input) => {
      const out = await seal(input);
      secrets.push(hex(out), toB64(out));
      return out;
    });
    await device.flush(transport);
    keys.lock();
    const touch = passkeyPRF();
    const prf: PasskeyPRF = async (reqs) => {
      const r = await touch(reqs);
      secrets.push(hex(r.output), toB64(r.output));
      return r;
    };
    keys = await device.unlock(fx.user, { prf });
    const groups = keys.groups();
    const read = await readAll(keys);
    // A passkey slot opened with another credential's PRF output: refused.
    const wrong = await attempt(() => device.unlock(fx.user, { prf: async (reqs) => ({ credential: reqs[0]!.credential, output: crypto.getRandomValues(new Uint8Array(32)) }) }));
    keys.lock();
    return { credential: toB64(cred), groups, read, wrong };
  },

  // offline: after a reload with the network off, the password unlocks,
  // records are read and written.
  async offline(password: string) {
    keys = await device.unlock(fx.user, { password });
    await remember(keys);
    const read = await readAll(keys);
    const wrote: string[] = [];
    for (const g of keys.groups()) {
      await device.putRecord(keys, g, "offline-note", "written offline in " + g);
      wrote.push(g);
    }
    const again = await readAll(keys);
    const push = await attempt(() => sync());
    keys.lock();
    return { groups: wrote, read, again, push };
  },

  // recover: the code as typed in the page's field; a new password; the old
  // one opens nothing. The report is queued (the network may be off).
  async recover(newPassword: string) {
    const typed = (document.getElementById("code") as HTMLInputElement).value;
    // DeviceSession.recover: from failed (interrupted) after the reload, a retry.
    const rec = await session!.recover(typed);
    const k = session!.states.machine.held()!.keys!;
    await remember(k);
    const read = await readAll(k);
    await rec.setPassword(newPassword);
    const afterSet = sessionState();
    session!.lock();
    const oldPassword = await attempt(() => device.unlock(fx.user, { password: fx.password }));
    const k2 = await device.unlock(fx.user, { password: newPassword });
    const groups = k2.groups();
    k2.lock();
    const wrongCode = await attempt(() => device.unlock(fx.user, { code: "0000-0000-0000-0000" }));
    return { report: rec.report, read, groups, oldPassword, pending: (await device.pending()).length, wrongCode, afterSet };
  },

  // recoverBegin: the code opens everything and the report is queued; the
  // page is then reloaded before a new password is set, with the step
  // "recovery" pending.
  async recoverBegin() {
    const typed = (document.getElementById("code") as HTMLInputElement).value;
    const s = await newSession();
    await s.recover(typed);
    await remember(s.states.machine.held()!.keys!);
    return { pending: (await device.pending()).length, session: sessionState() };
  },

  // online: one sync round sends what waited (the report, the new password
  // slot, the records written offline) and pulls the backend's state.
  async online() {
    const r = await sync();
    return { sent: r.reports, records: r.records, pending: (await device.pending()).length };
  },

  // pullAfterRecovery: the backend's new epoch replaced the unlock slots;
  // the code used opens nothing now.
  async pullAfterRecovery(typed: string) {
    await sync();
    const used = await attempt(() => device.unlock(fx.user, { code: typed }));
    return { used };
  },

  // stale: keys unlocked before a rotation reached the device do not write.
  async stale() {
    const d = await Device.open({ name: "escrowd-stale", deviceId: "s" });
    const made = await d.createUser("s", "key.s", "stale password", { spki: await device.devicePublicKey(), suite: "ecdh-p256", version: 1 });
    made.keys.lock();
    const member = await crypto.subtle.importKey("spki", made.memberPublic, { name: "ECDH", namedCurve: "P-256" }, true, []);
    const g1 = await newGDK("shared", 1);
    const slot1 = await sealPublic("member", { key_version: 1, id: "s" }, "ecdh-p256", member, g1);
    await d.addGroup("shared", encodeBundle("shared", [slot1]), [{ version: 1, commit: g1.commit }]);
    // A group whose member slot was altered in storage: it fails alone.
    const gt = await newGDK("tampered", 1);
    const bad = parseBundle(encodeBundle("tampered", [await sealPublic("member", { key_version: 1, id: "s" }, "ecdh-p256", member, gt)])).slots[0]!;
    bad.key_version = 2;
    const badText = encodeSlot(bad);
    await d.addGroup("tampered", encodeBundle("tampered", [badText]), [{ version: 1, commit: gt.commit }]);
    const k1 = await d.unlock("s", { password: "stale password" });
    const failed = k1.failures().map((f) => ({ group: f.group, code: f.error.code }));
    const opened = k1.groups();
    const before = await attempt(() => d.putRecord(k1, "shared", "a", "before the rotation"));
    // The rotation reaches the device (a sync, in this tab or another).
    const g2 = await newGDK("shared", 2);
    const slot2 = await sealPublic("member", { key_version: 1, id: "s" }, "ecdh-p256", member, g2);
    await d.addGroup("shared", encodeBundle("shared", [slot1, slot2, await sealChain(g1, g2)]), [{ version: 2, commit: g2.commit }]);
    const stale = await attempt(() => d.putRecord(k1, "shared", "b", "after the rotation"));
    k1.lock();
    const k2 = await d.unlock("s", { password: "stale password" });
    const after = await attempt(() => d.putRecord(k2, "shared", "b", "after the rotation"));
    const versions = k2.ring("shared").versions();
    const old = await d.getRecord(k2, "shared", "a");
    const written = parseRecord((await d.putRecord(k2, "shared", "c", "x"))).gdk_version;
    // A record altered at the backend: refused when read, the others still read.
    const good = parseRecord(await d.putRecord(k2, "shared", "d", "to be altered"));
    good.ct[3]! ^= 1;
    await d.importRecords("shared", [encodeRecord({ ...good, id: "t" })]);
    const tampered = await attempt(() => d.getRecord(k2, "shared", "t"));
    k2.lock();
    await d.logout();
    return { before: before.ok, stale, after: after.ok, versions, old: old ? td.decode(old) : null, written, failed, opened, tampered };
  },

  // hostile: bundles from a backend that wants to hang the page.
  async hostile() {
    const d = await Device.open({ name: "escrowd-hostile", deviceId: "h" });
    const made = await d.createUser("h", "key.h", "hostile password", { spki: await device.devicePublicKey(), suite: "ecdh-p256", version: 1 });
    made.keys.lock();
    // 9 000 000 iterations: allowed by the format, above the device's ceiling.
    const slots = parseBundle(made.bundle).slots.map((s) => (s.kind === "password" ? encodeSlot({ ...s, kdf: { ...s.kdf!, iterations: 9_000_000 } }) : encodeSlot(s)));
    await d.addGroup("key.h", encodeBundle("key.h", slots));
    const t0 = performance.now();
    const limit = await attempt(() => d.unlock("h", { password: "hostile password" }));
    const limitMs = performance.now() - t0;
    const range = await attempt(() => d.addGroup("key.h", made.bundle.replace('"iterations":600000', '"iterations":10000001')));
    const size = await attempt(() => d.addGroup("key.h", '{"v":2,"group":"key.h","slots":[' + " ".repeat(2 << 20) + "]}"));
    const deep = await attempt(() => d.addGroup("key.h", '{"v":2,"group":"key.h","slots":[' + "[".repeat(5000) + "]}"));
    await d.logout();
    return { limit, limitMs, range, size, deep };
  },

  async logout() {
    await device.logout();
    const dbs = await indexedDB.databases();
    return { databases: dbs.map((d) => d.name) };
  },

  secrets: () => secrets,

  // dump: every IndexedDB database, Cache Storage and localStorage as text.
  async dump() {
    const parts: string[] = [];
    const show = (v: unknown): unknown => {
      if (v instanceof Uint8Array || v instanceof ArrayBuffer) {
        const b = new Uint8Array(v);
        return { bytes_hex: hex(b), bytes_b64: b.length ? toB64(b) : "" };
      }
      if (typeof CryptoKey !== "undefined" && v instanceof CryptoKey) return { cryptokey: v.type, extractable: v.extractable, algorithm: v.algorithm.name };
      if (Array.isArray(v)) return v.map(show);
      if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, show(x)]));
      return v;
    };
    const keysOut: { extractable: boolean; type: string }[] = [];
    for (const info of await indexedDB.databases()) {
      const db = await new Promise<IDBDatabase>((res, rej) => {
        const r = indexedDB.open(info.name!);
        r.onsuccess = () => res(r.result);
        r.onerror = () => rej(r.error);
      });
      for (const store of Array.from(db.objectStoreNames)) {
        const all = await new Promise<unknown[]>((res, rej) => {
          const r = db.transaction(store).objectStore(store).getAll();
          r.onsuccess = () => res(r.result);
          r.onerror = () => rej(r.error);
        });
        const walk = (v: unknown) => {
          if (typeof CryptoKey !== "undefined" && v instanceof CryptoKey) keysOut.push({ extractable: v.extractable, type: v.type });
          else if (v && typeof v === "object" && !(v instanceof Uint8Array)) Object.values(v).forEach(walk);
        };
        all.forEach(walk);
        parts.push("idb " + info.name + "/" + store + ": " + JSON.stringify(show(all)));
      }
      db.close();
    }
    for (const name of await caches.keys()) {
      const c = await caches.open(name);
      for (const req of await c.keys()) parts.push("cache " + name + " " + req.url + ": " + (await (await c.match(req))!.text()));
    }
    for (let i = 0; i < localStorage.length; i++) {
      const k = localStorage.key(i)!;
      parts.push("localStorage " + k + ": " + localStorage.getItem(k));
    }
    return { text: parts.join("\n"), cryptoKeys: keysOut };
  },

  // bench: unlock 1 group and 50 groups with one password, and AES-GCM
  // records through the package against crypto.subtle, interleaved.
  async bench(rounds: number, sizes: number[]) {
    const med = (xs: number[]) => {
      const s = [...xs].sort((a, b) => a - b);
      return { median: s[Math.floor(s.length / 2)]!, min: s[0]!, max: s[s.length - 1]! };
    };
    const out: Record<string, unknown> = {};
    const devs: Record<string, Device> = {};
    for (const n of [1, 50]) {
      const name = "escrowd-bench-" + n;
      const d = await Device.open({ name, deviceId: "bench" });
      const made = await d.createUser("u", "key.u", "bench password", { spki: await device.devicePublicKey(), suite: "ecdh-p256", version: 1 });
      const member = await crypto.subtle.importKey("spki", made.memberPublic, { name: "ECDH", namedCurve: "P-256" }, true, []);
      for (let i = 0; i < n; i++) {
        const g = await newGDK("g" + i, 1);
        const slot = await sealPublic("member", { key_version: 1, id: "u" }, "ecdh-p256", member, g);
        await d.addGroup("g" + i, encodeBundle("g" + i, [slot]), [{ version: 1, commit: g.commit }]);
      }
      made.keys.lock();
      devs[n] = d;
    }
    const t: Record<number, number[]> = { 1: [], 50: [] };
    for (let r = 0; r < rounds; r++) {
      for (const n of r % 2 ? [50, 1] : [1, 50]) {
        const t0 = performance.now();
        const k = await devs[n]!.unlock("u", { password: "bench password" });
        t[n]!.push(performance.now() - t0);
        if (k.groups().length !== n) throw new Error("bench: opened " + k.groups().length + " groups, want " + n);
        k.lock();
      }
    }
    out["unlock_1_ms"] = med(t[1]!);
    out["unlock_50_ms"] = med(t[50]!);
    for (const d of Object.values(devs)) await d.logout();

    // Records: many short interleaved pairs (the package, then crypto.subtle
    // with the same key, IV and AAD work, or the other way round), each
    // pair giving one ratio; the median ratio is what is reported.
    const g = await newGDK("bench", 1);
    const raw = await recordKey(g);
    const pairs = rounds * 10 + 1;
    for (const size of sizes) {
      const pt = crypto.getRandomValues(new Uint8Array(size));
      const per = Math.max(16, Math.floor((1 << 20) / size)); // a block of 1 MiB: well above the timer's resolution
      const sdk: number[] = [];
      const subtle: number[] = [];
      const ratios: number[] = [];
      const runSDK = async () => {
        const t0 = performance.now();
        for (let i = 0; i < per; i++) await openRecord(await sealRecordRaw(g, "r" + i, pt), g);
        return performance.now() - t0;
      };
      const runSubtle = async () => {
        const t0 = performance.now();
        for (let i = 0; i < per; i++) {
          const iv = crypto.getRandomValues(new Uint8Array(12));
          const ad = recordAAD("bench", "r" + i, 1);
          const ct = await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: ad }, raw, pt);
          await crypto.subtle.decrypt({ name: "AES-GCM", iv, additionalData: ad }, raw, ct);
        }
        return performance.now() - t0;
      };
      for (let r = 0; r < pairs; r++) {
        let a: number, b: number;
        if (r % 2) {
          b = await runSubtle();
          a = await runSDK();
        } else {
          a = await runSDK();
          b = await runSubtle();
        }
        const mb = (size * per) / (1 << 20);
        sdk.push(mb / (a / 1000));
        subtle.push(mb / (b / 1000));
        ratios.push(b / a);
      }
      out["gcm_" + size] = { sdk_mib_s: med(sdk), subtle_mib_s: med(subtle), ratio: med(ratios), pairs, records_per_block: per };
    }
    return out;
  },
};

declare global {
  interface Window {
    sdk: typeof api;
    sdkReady: boolean;
  }
}
window.sdk = api;
window.sdkReady = true;
