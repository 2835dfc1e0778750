// The page the two-page browser test drives (state_browser.test.mjs): the
// SDK itself, a Device and its DeviceSession on the page's IndexedDB, with
// a user enrolled here (password slot, member key) and groups whose member
// and device slots are sealed to that user and this device. Records are the
// SDK's: AES-GCM under each group's record key, in the device's database.
import { Device, DeviceSession, type StatesEvent, encodeBundle, hex, newGDK, sealPublic, toB64 } from "../../src/index.js";
import { exportGDK } from "../../src/gdk.js";

const DB = "escrowd-state-test";
const USER = "u";
const DEVICE_ID = "page-device";
/** Every record's plaintext carries this: the storage dump must never show it. */
export const NOTE = "plaintext note 5c1e";

const events: string[] = [];
let device: Device;
let session: DeviceSession;
let endRecovery: (() => void) | undefined;
let hold: Promise<void> | undefined; // when set, the unlock work waits on it (to reload in the middle)
const codeOf = (e: unknown) => (e as { code?: string }).code ?? String(e);
const td = new TextDecoder();

async function counter(pt: Uint8Array | undefined): Promise<number> {
  return pt === undefined ? 0 : (JSON.parse(td.decode(pt)) as { n: number }).n;
}
const value = (n: number) => JSON.stringify({ n, note: NOTE });

const t = {
  events,
  /**
   * Enrols user u on a new device database with password, and groups with
   * a member slot (to u) and a device slot (to this device) of GDK 1.
   * Returns every key byte string the page made, for the storage check.
   */
  async enrol(password: string, groups: string[]) {
    const d = await Device.open({ name: DB, deviceId: DEVICE_ID });
    const made = await d.createUser(USER, "key." + USER, password, { spki: await d.devicePublicKey(), suite: "ecdh-p256", version: 1 });
    const seen = [made.keys.userKeyRing().newest()!];
    made.keys.lock();
    for (const g of groups) {
      const gdk = await newGDK(g, 1);
      seen.push(gdk);
      const member = await sealPublic("member", { key_version: 1, id: USER }, "ecdh-p256", made.memberPublic, gdk);
      const dev = await sealPublic("device", { key_version: 1, id: DEVICE_ID }, "ecdh-p256", await d.devicePublicKey(), gdk);
      await d.addGroup(g, encodeBundle(g, [member, dev]), [{ version: 1, commit: gdk.commit }]);
    }
    d.close();
    const keys: string[] = [];
    for (const k of seen) {
      const raw = await exportGDK(k);
      keys.push(hex(raw), toB64(raw));
    }
    return keys;
  },
  async start(groups: string[], idleMs = 0) {
    device = await Device.open({ name: DB, deviceId: DEVICE_ID });
    const unlock = device.unlock.bind(device);
    device.unlock = async (user, secret) => {
      if (hold) await hold;
      return unlock(user, secret);
    };
    session = await DeviceSession.open({ device, groups, idleMs });
    session.on((e: StatesEvent) => {
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
    return t.state();
  },
  state() {
    const groups: Record<string, string> = {};
    for (const g of session.states.groups()) groups[g] = session.states.group(g).state;
    const f = session.states.machine.failure;
    return { device: session.state, failure: f?.code ?? null, message: f?.message ?? null, step: f?.step ?? null, groups,
      marker: sessionStorage.getItem("escrowd.unlocking.device") };
  },
  async unlock(password: string) {
    try {
      await session.unlock({ password });
      return { ok: true };
    } catch (e) {
      return { ok: false, code: codeOf(e) };
    }
  },
  /** Starts an unlock that waits until the page goes away. */
  unlockHeld(password: string) {
    hold = new Promise(() => {});
    session.unlock({ password }).catch(() => {});
    return session.state;
  },
  /** The password opened the keys; a step marked pending (as recover() marks "recovery") is not ended yet. */
  async unlockPending(password: string, step: string) {
    await session.unlock({ password });
    endRecovery = session.states.pending(step);
    return t.state();
  },
  markRecovery() {
    endRecovery = session.states.pending("recovery");
    return t.state();
  },
  endRecovery: () => endRecovery?.(),
  lock: () => session.lock(),
  touch: () => session.states.touch(),
  logout: () => session.logout(),
  /** Whether this page holds g's GDKs (it opened the slots) or only record keys another page posted. */
  holdsGDK: (g: string) => session.states.keys(g).ring !== undefined,
  /** The group's counter record, read with this page's record keys. */
  read: async (g: string) => counter(await session.get(g, "counter")),
  /**
   * n increments at once, each a read, a pause and a write of the counter
   * record; locked: session.update (the group's Web Lock); else the same
   * steps on the record store without it (the control).
   */
  async incr(g: string, n: number, locked: boolean) {
    const pause = () => new Promise((r) => setTimeout(r, 1));
    const one = async () => {
      if (locked) {
        await session.update(g, "counter", async (old) => {
          const v = await counter(old);
          await pause();
          return value(v + 1);
        });
        return;
      }
      const h = session.states.keys(g);
      const v = await counter(await device.readRecord(h, "counter"));
      await pause();
      await device.writeRecord(h, "counter", value(v + 1));
    };
    const res = await Promise.allSettled(Array.from({ length: n }, one));
    return res.filter((r) => r.status === "rejected").map((r) => codeOf(r.reason));
  },
  async keysError(g: string) {
    try {
      session.states.keys(g);
      return null;
    } catch (e) {
      return codeOf(e);
    }
  },
  async writeError(g: string) {
    try {
      await session.put(g, "x", value(0));
      return null;
    } catch (e) {
      return codeOf(e);
    }
  },
  /**
   * Everything the origin stores, as text: every IndexedDB database (bytes
   * as hex; a CryptoKey as its description, its bytes being out of reach),
   * Cache Storage, localStorage and sessionStorage.
   */
  async dump() {
    const dbs: Record<string, Record<string, unknown[]>> = {};
    for (const { name } of await indexedDB.databases()) {
      if (!name) continue;
      const db = await new Promise<IDBDatabase>((resolve, reject) => {
        const r = indexedDB.open(name);
        r.onsuccess = () => resolve(r.result);
        r.onerror = () => reject(r.error);
      });
      try {
        const out: Record<string, unknown[]> = {};
        for (const s of Array.from(db.objectStoreNames)) {
          out[s] = await new Promise<unknown[]>((resolve, reject) => {
            const r = db.transaction(s).objectStore(s).getAll();
            r.onsuccess = () => resolve(r.result);
            r.onerror = () => reject(r.error);
          });
        }
        dbs[name] = out;
      } finally {
        db.close();
      }
    }
    const cache: Record<string, string[]> = {};
    for (const n of await caches.keys()) {
      const c = await caches.open(n);
      cache[n] = await Promise.all((await c.keys()).map(async (r) => r.url + " " + (await (await c.match(r))!.text())));
    }
    const text = JSON.stringify({ dbs, cache, local: { ...localStorage }, session: { ...sessionStorage } }, (_k, v: unknown) => {
      if (v instanceof Uint8Array) return hex(v);
      if (v instanceof ArrayBuffer) return hex(new Uint8Array(v));
      if (v instanceof CryptoKey) return "CryptoKey " + v.algorithm.name + " extractable=" + v.extractable;
      return v;
    });
    return { names: Object.keys(dbs), text };
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
