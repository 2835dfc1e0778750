// A small promise wrapper over IndexedDB: one database per device and
// app, five object stores (docs/DEVICE.md, "At rest").

import { DeviceError } from "./errors.js";

export const STORES = ["device", "groups", "users", "records", "outbox"] as const;
export type StoreName = (typeof STORES)[number];
const DB_VERSION = 1;

function req<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function storageError(e: unknown): DeviceError {
  if (e instanceof DeviceError) return e;
  const name = e instanceof DOMException ? e.name : "";
  return new DeviceError("storage", name || "IndexedDB failed", { cause: e });
}

export class DB {
  #closed = false;

  private constructor(readonly name: string, private readonly db: IDBDatabase) {
    // Another tab's logout deletes the database: close so it is not blocked.
    db.onversionchange = () => this.close();
  }

  /** closed: this connection was closed, here or because another tab deleted the database. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * open opens the database, creating it when create is true. With create
   * false a missing database is "not-enrolled" and stays missing: a
   * service worker syncing just after a logout must not bring back an
   * empty database the logout deleted.
   */
  static async open(name: string, create = true): Promise<DB> {
    let missing = false;
    try {
      const r = indexedDB.open(name, DB_VERSION);
      r.onupgradeneeded = (ev) => {
        if (!create && ev.oldVersion === 0) {
          // Aborting the upgrade of a database that did not exist deletes it.
          missing = true;
          r.transaction?.abort();
          return;
        }
        const db = r.result;
        db.createObjectStore("device");
        db.createObjectStore("groups", { keyPath: "group" });
        db.createObjectStore("users", { keyPath: "user" });
        db.createObjectStore("records", { keyPath: ["group", "id"] });
        // One row per report: the same code queued twice (a recovery begun
        // again after a reload) is sent once.
        db.createObjectStore("outbox", { keyPath: "id" });
      };
      return new DB(name, await req(r));
    } catch (e) {
      if (missing) throw new DeviceError("not-enrolled", "this device has no database");
      throw storageError(e);
    }
  }

  async get<T>(store: StoreName, key: IDBValidKey): Promise<T | undefined> {
    try {
      return await req(this.db.transaction(store).objectStore(store).get(key));
    } catch (e) {
      throw storageError(e);
    }
  }

  async all<T>(store: StoreName, range?: IDBKeyRange): Promise<T[]> {
    try {
      return await req(this.db.transaction(store).objectStore(store).getAll(range));
    } catch (e) {
      throw storageError(e);
    }
  }

  /** put writes values in one transaction; a DataCloneError comes out as itself (see the device key). */
  async put(store: StoreName, values: unknown[], key?: IDBValidKey): Promise<void> {
    let tx: IDBTransaction;
    try {
      tx = this.db.transaction(store, "readwrite");
      const os = tx.objectStore(store);
      for (const v of values) os.put(v, key);
    } catch (e) {
      if (e instanceof DOMException && e.name === "DataCloneError") throw e;
      throw storageError(e);
    }
    await done(tx);
  }

  async delete(store: StoreName, key: IDBValidKey | IDBKeyRange): Promise<void> {
    const tx = this.db.transaction(store, "readwrite");
    tx.objectStore(store).delete(key);
    await done(tx);
  }

  close(): void {
    this.#closed = true;
    this.db.close();
  }

  /** wipe deletes the whole database. */
  static async wipe(name: string): Promise<void> {
    try {
      await req(indexedDB.deleteDatabase(name));
    } catch (e) {
      throw storageError(e);
    }
  }
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(storageError(tx.error));
    tx.onabort = () => reject(storageError(tx.error));
  });
}
