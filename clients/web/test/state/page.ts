// The page the browser test drives: a DeviceStates from src/state with a
// stand-in crypto layer (PBKDF2 → HKDF → AES-GCM, all keys non-extractable)
// and a stand-in record store (an AES-GCM counter per group in IndexedDB),
// enough to exercise the machines, the channel and the locks for real.
import { DeviceStates, type StateError } from "../../src/state/index.js";

const DB = "escrowd-state-test";
const STORES = ["meta", "versions", "records"];
const enc = new TextEncoder();

interface Box {
  iv: Uint8Array<ArrayBuffer>;
  ct: Uint8Array<ArrayBuffer>;
}
/** The stand-in handles: the device's HKDF root and a group's AES-GCM key, all non-extractable. */
interface DeviceKeys {
  root: CryptoKey;
}
interface GroupKeys {
  key: CryptoKey;
  version: number;
}
type Store = (typeof STORES)[number];

function idb(): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const r = indexedDB.open(DB, 1);
    r.onupgradeneeded = () => STORES.forEach((s) => r.result.createObjectStore(s));
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}
let dbp: Promise<IDBDatabase> | undefined;
const db = () => (dbp ??= idb());
async function tx<T>(store: Store, mode: IDBTransactionMode, fn: (o: IDBObjectStore) => IDBRequest<T>): Promise<T> {
  const d = await db();
  return new Promise((resolve, reject) => {
    const t = d.transaction(store, mode);
    const req = fn(t.objectStore(store));
    t.oncomplete = () => resolve(req.result);
    t.onerror = () => reject(t.error);
  });
}
const get = <T>(s: Store, k: string) => tx(s, "readonly", (o) => o.get(k) as IDBRequest<T | undefined>);
const put = (s: Store, k: string, v: unknown) => tx(s, "readwrite", (o) => o.put(v, k));

async function rootKey(password: string, salt: Uint8Array<ArrayBuffer>): Promise<CryptoKey> {
  const pw = await crypto.subtle.importKey("raw", enc.encode(password), "PBKDF2", false, ["deriveBits"]);
  const bits = await crypto.subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations: 50_000 }, pw, 256);
  return crypto.subtle.importKey("raw", bits, "HKDF", false, ["deriveKey"]);
}
const aesFrom = (root: CryptoKey, info: string): Promise<CryptoKey> => crypto.subtle.deriveKey(
  { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(32), info: enc.encode(info) }, root, { name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
async function seal(key: CryptoKey, aad: string, value: unknown): Promise<Box> {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const ct = await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: enc.encode(aad) }, key, enc.encode(JSON.stringify(value)));
  return { iv, ct: new Uint8Array(ct) };
}
async function open<T>(key: CryptoKey, aad: string, box: Box | undefined): Promise<T> {
  if (box === undefined) throw new Error("no such record");
  const pt = await crypto.subtle.decrypt({ name: "AES-GCM", iv: box.iv, additionalData: enc.encode(aad) }, key, box.ct);
  return JSON.parse(new TextDecoder().decode(pt)) as T;
}
const coded = (code: string, message: string) => Object.assign(new Error(message), { code });

const events: string[] = [];
let device: DeviceStates<string, DeviceKeys, GroupKeys>;
let endRecovery: (() => void) | undefined;
let hold: Promise<void> | undefined; // when set, the unlock work waits on it (to reload in the middle)
const codeOf = (e: unknown) => (e as Partial<StateError>).code ?? String(e);

const t = {
  events,
  /** Stores a new enrolment: salt, a check value, group g at version 1 with counter 0. */
  async enrol(password: string, groups: string[]) {
    const salt = crypto.getRandomValues(new Uint8Array(16));
    const root = await rootKey(password, salt);
    await put("meta", "salt", salt);
    await put("meta", "check", await seal(await aesFrom(root, "check"), "check", "ok"));
    for (const g of groups) {
      await put("versions", g, 1);
      await put("records", "counter:" + g, await seal(await aesFrom(root, "group:" + g + ":v1"), g, 0));
    }
  },
  async start(groups: string[], idleMs = 0) {
    const enrolled = (await get("meta", "salt")) !== undefined;
    device = new DeviceStates<string, DeviceKeys, GroupKeys>({
      initial: enrolled ? "locked" : "wiped",
      idleMs,
      unlock: async (password, signal) => {
        if (hold) await hold;
        const salt = await get<Uint8Array<ArrayBuffer>>("meta", "salt");
        if (!salt) throw coded("not-enrolled", "This device holds no keys.");
        const root = await rootKey(password, salt);
        signal.throwIfAborted();
        try {
          await open(await aesFrom(root, "check"), "check", await get<Box>("meta", "check"));
        } catch {
          throw coded("wrong-secret", "Wrong password or passkey.");
        }
        return { root };
      },
      openGroup: async (g, dk) => {
        const version = await get<number>("versions", g);
        if (version === undefined) throw coded("not-enrolled", "You have no key for this group.");
        return { key: await aesFrom(dk.root, "group:" + g + ":v" + version), version };
      },
      groupVersion: (gk) => gk.version,
      versions: { newest: (g) => get<number>("versions", g), raise: async (g, v) => void (await put("versions", g, v)) },
      wipe: async () => {
        for (const s of STORES) await tx(s, "readwrite", (o) => o.clear());
      },
      share: {
        device: { toWire: (h) => ({ root: h.root }), fromWire: (w) => ({ root: (w as DeviceKeys).root }) },
        group: { toWire: (h) => ({ key: h.key, version: h.version }), fromWire: (w) => ({ key: (w as GroupKeys).key, version: (w as GroupKeys).version }) },
      },
    });
    device.on((e) => {
      switch (e.type) {
        case "state":
          events.push([e.change.scope, e.change.from, e.change.event, e.change.to, e.change.origin].join(" "));
          break;
        case "version":
          events.push("version " + e.group + " " + e.version);
          break;
        case "share-refused":
          events.push("share-refused " + e.scope + " " + codeOf(e.error));
          break;
      }
    });
    for (const g of groups) device.group(g);
    return t.state();
  },
  state() {
    const groups: Record<string, string> = {};
    for (const g of device.groups()) groups[g] = device.group(g).state;
    const f = device.machine.failure;
    return { device: device.state, failure: f?.code ?? null, message: f?.message ?? null, step: f?.step ?? null, groups,
      marker: sessionStorage.getItem("escrowd.unlocking.device") };
  },
  async unlock(password: string) {
    try {
      await device.unlock(password);
      return { ok: true };
    } catch (e) {
      return { ok: false, code: codeOf(e) };
    }
  },
  /** Starts an unlock that waits until the page goes away. */
  unlockHeld(password: string) {
    hold = new Promise(() => {});
    device.unlock(password).catch(() => {});
    return device.state;
  },
  /** A recovery stand-in: the code opens the keys, then the new password is pending until done() is called. */
  async recoverUntilPending(password: string) {
    await device.unlock(password);
    return t.markRecovery();
  },
  markRecovery() {
    endRecovery = device.pending("recovery");
    return t.state();
  },
  endRecovery: () => endRecovery?.(),
  lock: () => device.lock(),
  touch: () => device.touch(),
  logout: () => device.logout(),
  /** The group's counter, read with this tab's group keys (posted by another tab or its own). */
  async read(g: string) {
    const k = device.group(g).keys();
    return open<number>(k.key, g, await get<Box>("records", "counter:" + g));
  },
  /** n increments at once, each a read, a pause and a write in separate transactions; locked: under DeviceStates.write. */
  async incr(g: string, n: number, locked: boolean) {
    const one = async (k: GroupKeys) => {
      const v = await open<number>(k.key, g, await get<Box>("records", "counter:" + g));
      await new Promise((r) => setTimeout(r, 1));
      await put("records", "counter:" + g, await seal(k.key, g, v + 1));
    };
    const res = await Promise.allSettled(Array.from({ length: n }, () => (locked ? device.write(g, one) : one(device.group(g).keys()))));
    return res.filter((r) => r.status === "rejected").map((r) => codeOf(r.reason));
  },
  async keysError(g: string) {
    try {
      device.group(g).keys();
      return null;
    } catch (e) {
      return codeOf(e);
    }
  },
  async writeError(g: string) {
    try {
      await device.write(g, async () => {});
      return null;
    } catch (e) {
      return codeOf(e);
    }
  },
  /** Everything in IndexedDB and the Web Storage areas, as text, to look for secrets. */
  async dump() {
    const out: Record<string, unknown[]> = {};
    for (const s of STORES) {
      out[s] = await tx(s, "readonly", (o) => o.getAll());
    }
    const txt = JSON.stringify(out, (_k, v: unknown) => (v instanceof Uint8Array ? Array.from(v) : v));
    return { idb: out, text: txt + JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) };
  },
};
declare global {
  interface Window {
    t: typeof t;
    ready: boolean;
  }
}
window.t = t;
window.ready = true;
