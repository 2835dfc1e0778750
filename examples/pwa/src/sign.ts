// Request signing for the sync backend's device API
// (examples/syncbackend/README.md, "Device authentication"): a
// non-extractable ECDSA P-256 key, kept in IndexedDB, signs the method, the
// request URI, the device id, the time, a fresh nonce and the SHA-256 of
// the body. The backend holds only the public half.

const subtle = () => globalThis.crypto.subtle;

export const SIGN_CONTEXT = "escrowd-syncbackend-v1";
export const APPROVE_CONTEXT = "escrowd-syncbackend-approve-v1";

export function hex(b: ArrayBuffer | Uint8Array): string {
  return Array.from(b instanceof Uint8Array ? b : new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
}

/** b64 is standard padded base64: how the backend's strict JSON carries bytes. */
export function b64(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += String.fromCharCode(x);
  return btoa(s);
}

export function unb64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function b64url(b: Uint8Array): string {
  return b64(b).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** message is the byte string a device signs for one request. */
export async function message(method: string, uri: string, device: string, time: number, nonce: string, body: Uint8Array): Promise<Uint8Array> {
  const sum = hex(await subtle().digest("SHA-256", body as BufferSource));
  return new TextEncoder().encode([SIGN_CONTEXT, method, uri, device, String(time), nonce, sum].join("\n"));
}

/** KeyStore keeps the signing key; IndexedDB in the browser (idbKeyStore), memory in tests. */
export interface KeyStore {
  get(): Promise<StoredKey | undefined>;
  put(k: StoredKey): Promise<void>;
}

export interface StoredKey {
  device: string;
  keys: CryptoKeyPair;
}

/** Signer signs requests as one device. Its private key cannot be exported, only used. */
export class Signer {
  private constructor(readonly device: string, private readonly keys: CryptoKeyPair) {}

  /** load returns the stored signer, or makes one for device (a new device) and stores it. */
  static async load(store: KeyStore, device?: string): Promise<Signer> {
    const got = await store.get();
    if (got) return new Signer(got.device, got.keys);
    if (!device) throw new Error("this device has no signing key yet");
    const keys = (await subtle().generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"])) as CryptoKeyPair;
    await store.put({ device, keys });
    return new Signer(device, keys);
  }

  /** extractable is false for every key this module makes: the private half can be used, never read. */
  get extractable(): boolean {
    return this.keys.privateKey.extractable;
  }

  /** publicKey is the SPKI the backend binds to the device id at enrolment. */
  async publicKey(): Promise<Uint8Array> {
    return new Uint8Array(await subtle().exportKey("spki", this.keys.publicKey));
  }

  async signBytes(msg: Uint8Array): Promise<Uint8Array> {
    return new Uint8Array(await subtle().sign({ name: "ECDSA", hash: "SHA-256" }, this.keys.privateKey, msg as BufferSource));
  }

  /** headers signs one request: uri is the path and query exactly as sent. */
  async headers(method: string, uri: string, body: Uint8Array, now = Date.now()): Promise<Record<string, string>> {
    const time = Math.floor(now / 1000);
    const nonce = b64url(globalThis.crypto.getRandomValues(new Uint8Array(16)));
    const sig = await this.signBytes(await message(method, uri, this.device, time, nonce, body));
    return { "Sync-Device": this.device, "Sync-Time": String(time), "Sync-Nonce": nonce, "Sync-Signature": b64url(sig) };
  }

  /** approve signs the approval of another device of the account (POST /v1/devices). */
  async approve(account: string, device: string, signKey: Uint8Array, wrapKey: Uint8Array): Promise<Uint8Array> {
    const s = hex(await subtle().digest("SHA-256", signKey as BufferSource));
    const w = hex(await subtle().digest("SHA-256", wrapKey as BufferSource));
    return this.signBytes(new TextEncoder().encode([APPROVE_CONTEXT, account, device, s, w].join("\n")));
  }
}

/** idbKeyStore keeps the signing key pair in IndexedDB: a CryptoKey is stored as itself, its private half still not extractable. */
export function idbKeyStore(name = "escrowd-pwa-sign"): KeyStore {
  const open = () =>
    new Promise<IDBDatabase>((resolve, reject) => {
      const r = indexedDB.open(name, 1);
      r.onupgradeneeded = () => r.result.createObjectStore("key");
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    });
  const tx = async <T>(mode: IDBTransactionMode, f: (s: IDBObjectStore) => IDBRequest): Promise<T> => {
    const db = await open();
    try {
      return await new Promise<T>((resolve, reject) => {
        const req = f(db.transaction("key", mode).objectStore("key"));
        req.onsuccess = () => resolve(req.result as T);
        req.onerror = () => reject(req.error);
      });
    } finally {
      db.close();
    }
  };
  return {
    get: () => tx<StoredKey | undefined>("readonly", (s) => s.get("device")),
    put: async (k) => {
      await tx("readwrite", (s) => s.put(k, "device"));
    },
  };
}

/** wipeKeyStore deletes the signing key's database (logout). */
export function wipeKeyStore(name = "escrowd-pwa-sign"): Promise<void> {
  return new Promise((resolve, reject) => {
    const r = indexedDB.deleteDatabase(name);
    r.onsuccess = () => resolve();
    r.onerror = () => reject(r.error);
  });
}
