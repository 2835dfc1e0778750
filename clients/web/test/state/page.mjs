// The page the browser test drives: a DeviceStates from src/state with a
// stand-in crypto layer (PBKDF2 → HKDF → AES-GCM, all keys non-extractable)
// and a stand-in record store (an AES-GCM counter per group in IndexedDB),
// enough to exercise the machines, the channel and the locks for real.
import { DeviceStates } from "../../src/state/index.ts";

const DB = "escrowd-state-test";
const STORES = ["meta", "versions", "records"];
const enc = new TextEncoder();

function idb() {
  return new Promise((resolve, reject) => {
    const r = indexedDB.open(DB, 1);
    r.onupgradeneeded = () => STORES.forEach((s) => r.result.createObjectStore(s));
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}
let dbp;
const db = () => (dbp ??= idb());
async function tx(store, mode, fn) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const t = d.transaction(store, mode);
    const req = fn(t.objectStore(store));
    t.oncomplete = () => resolve(req?.result);
    t.onerror = () => reject(t.error);
  });
}
const get = (s, k) => tx(s, "readonly", (o) => o.get(k));
const put = (s, k, v) => tx(s, "readwrite", (o) => o.put(v, k));

async function rootKey(password, salt) {
  const pw = await crypto.subtle.importKey("raw", enc.encode(password), "PBKDF2", false, ["deriveBits"]);
  const bits = await crypto.subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations: 50_000 }, pw, 256);
  return crypto.subtle.importKey("raw", bits, "HKDF", false, ["deriveKey"]);
}
const aesFrom = (root, info) => crypto.subtle.deriveKey(
  { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(32), info: enc.encode(info) }, root, { name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
async function seal(key, aad, value) {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const ct = await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: enc.encode(aad) }, key, enc.encode(JSON.stringify(value)));
  return { iv, ct: new Uint8Array(ct) };
}
async function open(key, aad, box) {
  const pt = await crypto.subtle.decrypt({ name: "AES-GCM", iv: box.iv, additionalData: enc.encode(aad) }, key, box.ct);
  return JSON.parse(new TextDecoder().decode(pt));
}
const coded = (code, message) => Object.assign(new Error(message), { code });

const events = [];
let device;
let hold; // when set, the unlock work waits on it (to reload in the middle)

const t = {
  events,
  /** Stores a new enrolment: salt, a check value, group g at version 1 with counter 0. */
  async enrol(password, groups) {
    const salt = crypto.getRandomValues(new Uint8Array(16));
    const root = await rootKey(password, salt);
    await put("meta", "salt", salt);
    await put("meta", "check", await seal(await aesFrom(root, "check"), "check", "ok"));
    for (const g of groups) {
      await put("versions", g, 1);
      await put("records", "counter:" + g, await seal(await aesFrom(root, "group:" + g + ":v1"), g, 0));
    }
  },
  async start(groups) {
    const enrolled = (await get("meta", "salt")) !== undefined;
    device = new DeviceStates({
      initial: enrolled ? "locked" : "wiped",
      unlock: async (password, signal) => {
        if (hold) await hold;
        const salt = await get("meta", "salt");
        if (!salt) throw coded("not-enrolled", "This device holds no keys.");
        const root = await rootKey(password, salt);
        signal.throwIfAborted();
        try {
          await open(await aesFrom(root, "check"), "check", await get("meta", "check"));
        } catch {
          throw coded("wrong-secret", "Wrong password or passkey.");
        }
        return { root };
      },
      openGroup: async (g, dk) => {
        const version = await get("versions", g);
        if (version === undefined) throw coded("not-enrolled", "You have no key for this group.");
        return { key: await aesFrom(dk.root, "group:" + g + ":v" + version), version };
      },
      groupVersion: (gk) => gk.version,
      versions: { newest: (g) => get("versions", g), raise: (g, v) => put("versions", g, v) },
      wipe: async () => {
        for (const s of STORES) await tx(s, "readwrite", (o) => o.clear());
      },
      share: {
        device: { toWire: (h) => ({ root: h.root }), fromWire: (w) => ({ root: w.root }) },
        group: { toWire: (h) => ({ key: h.key, version: h.version }), fromWire: (w) => ({ key: w.key, version: w.version }) },
      },
    });
    device.on((e) => events.push(e.type === "state" ? [e.change.scope, e.change.from, e.change.event, e.change.to, e.change.origin].join(" ") : "version " + e.group + " " + e.version));
    for (const g of groups) device.group(g);
    return t.state();
  },
  state() {
    const groups = {};
    for (const g of device.groups()) groups[g] = device.group(g).state;
    return { device: device.state, failure: device.machine.failure?.code ?? null, message: device.machine.failure?.message ?? null, groups,
      marker: sessionStorage.getItem("escrowd.unlocking.device") };
  },
  async unlock(password) {
    try {
      await device.unlock(password);
      return { ok: true };
    } catch (e) {
      return { ok: false, code: e.code ?? String(e) };
    }
  },
  /** Starts an unlock that waits until the page goes away. */
  unlockHeld(password) {
    hold = new Promise(() => {});
    device.unlock(password).catch(() => {});
    return device.state;
  },
  lock: () => device.lock(),
  logout: () => device.logout(),
  /** The group's counter, read with this tab's group keys (posted by another tab or its own). */
  async read(g) {
    const k = device.group(g).keys();
    return open(k.key, g, await get("records", "counter:" + g));
  },
  /** n increments at once, each a read, a pause and a write in separate transactions; locked: under DeviceStates.write. */
  async incr(g, n, locked) {
    const one = async (k) => {
      const v = await open(k.key, g, await get("records", "counter:" + g));
      await new Promise((r) => setTimeout(r, 1));
      await put("records", "counter:" + g, await seal(k.key, g, v + 1));
    };
    const res = await Promise.allSettled(Array.from({ length: n }, () => (locked ? device.write(g, one) : one(device.group(g).keys()))));
    return res.filter((r) => r.status === "rejected").map((r) => r.reason?.code ?? String(r.reason));
  },
  async keysError(g) {
    try {
      device.group(g).keys();
      return null;
    } catch (e) {
      return e.code;
    }
  },
  async writeError(g) {
    try {
      await device.write(g, async () => {});
      return null;
    } catch (e) {
      return e.code;
    }
  },
  /** Everything in IndexedDB and the Web Storage areas, as text, to look for secrets. */
  async dump() {
    const out = {};
    for (const s of STORES) {
      out[s] = await tx(s, "readonly", (o) => o.getAll());
    }
    const txt = JSON.stringify(out, (_k, v) => (v instanceof Uint8Array ? Array.from(v) : v));
    return { idb: out, text: txt + JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) };
  },
};
window.t = t;
window.ready = true;
