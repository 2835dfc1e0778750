// DeviceSession joins the key hierarchy (Device) to the key state machines
// (DeviceStates): one password entry or passkey touch unlocks the device
// machine and, through it, every group's machine; records are written as
// the only writer of their group in every tab, never with an old GDK; lock,
// logout and unlock reach the other tabs. docs/DEVICE.md, "States".

import type { Bytes } from "./bytes.js";
import { type Device, type RecordKeys, type Recovery, type Secret, type UnlockedKeys, recordKeysOf } from "./device.js";
import { DeviceError } from "./errors.js";
import type { Keyring } from "./keyring.js";
import type { ConsumedCode, Transport } from "./transport.js";
import type { Clock } from "./state/clock.js";
import { DeviceStates, type StatesEvent } from "./state/states.js";
import type { HandleCodec } from "./state/share.js";
import type { Channel } from "./state/tabs.js";
import type { Locks } from "./state/locks.js";
import type { MarkerStore } from "./state/marker.js";

/**
 * The device machine's handle. keys is absent in a tab that adopted
 * another tab's unlock: that tab holds its groups' record keys only.
 */
export interface DeviceHandle {
  readonly user: string | null;
  readonly keys?: UnlockedKeys;
}

/**
 * A group machine's handle: the group's non-extractable record keys by GDK
 * version and the version it writes with. ring (the GDKs themselves) is
 * present only in the tab that opened the group's slots.
 */
export interface GroupHandle extends RecordKeys {
  readonly ring?: Keyring;
}

export interface SessionOptions {
  readonly device: Device;
  /** The user whose password, passkey or code unlocks ("ui"). Default: the one user enrolled on the device. */
  readonly user?: string;
  /** "ui" (a page) or "background" (a service worker: unlockDevice, the device key, no user). Default "ui". */
  readonly role?: "ui" | "background";
  /** The groups to hold machines for. Default: every group stored on the device but the users' own key groups. */
  readonly groups?: readonly string[];
  /** Where a recovery's "code consumed" report goes once the new password is set (queued until it is taken). */
  readonly transport?: Transport;
  /** Post each group's record keys to the other tabs when it unlocks. Default true. */
  readonly share?: boolean;
  readonly idleMs?: number;
  readonly clock?: Clock;
  readonly marker?: MarkerStore | null;
  readonly channel?: Channel | null;
  readonly locks?: Locks | null;
}

/** A recovery whose code opened the keys: setPassword seals the new password and ends the pending step. */
export interface RecoveryStep {
  readonly report: ConsumedCode;
  setPassword(password: string): Promise<void>;
}

/** The secret of a page's unlock; null for a background unlock with the device key. */
export type SessionSecret = Secret | null;

const isVersion = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 1 && v <= 0xffffffff;
/** The most GDK versions one group's shared handle may carry. */
const MAX_SHARED_VERSIONS = 4096;

/**
 * The codec of a group's handle across tabs: the version and the
 * non-extractable AES-GCM record keys, never a GDK (a GDK is kept
 * extractable where it seals slots, and assertShareable refuses it). A
 * receiving tab reads records of every version the sender held and writes
 * under the newest; it cannot open or seal a slot, follow a rotation, or
 * open a group the sender had not opened.
 */
export const groupCodec: HandleCodec<GroupHandle> = {
  toWire: (h) => ({ group: h.group, version: h.version, keys: new Map(h.keys) }),
  fromWire: (w) => {
    const { group, version, keys } = (w ?? {}) as { group?: unknown; version?: unknown; keys?: unknown };
    if (typeof group !== "string" || group.length < 1 || group.length > 128 || !isVersion(version) || !(keys instanceof Map) || keys.size > MAX_SHARED_VERSIONS) {
      throw new DeviceError("locked", "another tab's group keys are not of this version of the SDK");
    }
    const out = new Map<number, CryptoKey>();
    for (const [v, k] of keys as Map<unknown, unknown>) {
      if (!isVersion(v) || !(k instanceof CryptoKey) || k.extractable || k.algorithm.name !== "AES-GCM") {
        throw new DeviceError("locked", "another tab posted a key that is not a non-extractable record key");
      }
      out.set(v, k);
    }
    if (!out.has(version)) throw new DeviceError("locked", "another tab posted no key of the version it writes with");
    return { group, version, keys: out };
  },
};

/** The device's handle crosses as its user alone: the member key and GDKs stay in the tab that unlocked. */
export const deviceCodec: HandleCodec<DeviceHandle> = {
  toWire: (h) => ({ user: h.user }),
  fromWire: (w) => {
    const user = (w as { user?: unknown } | null)?.user;
    if (user !== null && typeof user !== "string") throw new DeviceError("locked", "another tab's device handle is not of this version of the SDK");
    return { user };
  },
};

export class DeviceSession {
  readonly states: DeviceStates<SessionSecret, DeviceHandle, GroupHandle>;
  readonly device: Device;
  readonly user: string | null;
  #recovery: Recovery | undefined;

  private constructor(device: Device, user: string | null, opts: SessionOptions, initial: "locked" | "wiped") {
    this.device = device;
    this.user = user;
    const background = opts.role === "background";
    const share = !background && opts.share !== false;
    this.states = new DeviceStates<SessionSecret, DeviceHandle, GroupHandle>({
      unlock: (secret) => this.#unlock(secret, background, opts.transport),
      openGroup: (id, dh) => this.#openGroup(id, dh),
      groupVersion: (h) => h.version,
      versions: device.versions,
      wipe: () => device.logout(),
      drop: { device: (h) => h.keys?.lock() },
      initial,
      role: background ? "background" : "ui",
      ...(share ? { share: { device: deviceCodec, group: groupCodec } } : {}),
      ...(opts.idleMs !== undefined ? { idleMs: opts.idleMs } : {}),
      ...(opts.clock !== undefined ? { clock: opts.clock } : {}),
      ...(opts.marker !== undefined ? { marker: opts.marker } : {}),
      ...(opts.channel !== undefined ? { channel: opts.channel } : {}),
      ...(opts.locks !== undefined ? { locks: opts.locks } : {}),
    });
  }

  /**
   * open makes the session of device: its machines start "locked" when the
   * device holds an enrolment (a user, or for "background" a group), else
   * "wiped"; a page reloaded in the middle of an unlock or a recovery
   * starts "failed" (interrupted).
   */
  static async open(opts: SessionOptions): Promise<DeviceSession> {
    const d = opts.device;
    const users = await d.users();
    const groups = opts.groups ?? (await d.groupIds());
    const background = opts.role === "background";
    const user = background ? null : (opts.user ?? (users.length === 1 ? users[0]! : null));
    const enrolled = background ? groups.length > 0 : user !== null && users.includes(user);
    const s = new DeviceSession(d, user, opts, enrolled ? "locked" : "wiped");
    for (const g of groups) s.states.group(g);
    return s;
  }

  get state() {
    return this.states.state;
  }

  on(listener: (e: StatesEvent) => void): () => void {
    return this.states.on(listener);
  }

  /** unlock opens every group with one password entry or passkey touch. */
  unlock(secret: Secret): Promise<void> {
    return this.states.unlock(secret);
  }

  /** unlockDevice opens every group with the device key, without the user: a "background" session. */
  unlockDevice(): Promise<void> {
    return this.states.unlock(null);
  }

  /**
   * recover opens everything with a typed unlock code, queues its "code
   * consumed" report and marks the recovery pending until setPassword has
   * sealed the new password: a reload in between starts "failed",
   * interrupted, step "recovery".
   */
  async recover(code: string): Promise<RecoveryStep> {
    await this.states.unlock({ code });
    const r = this.#recovery;
    if (r === undefined) throw new DeviceError("locked", "the code's unlock was adopted from another tab");
    const end = this.states.pending("recovery");
    return {
      report: r.report,
      setPassword: async (password: string) => {
        await r.setPassword(password);
        this.#recovery = undefined;
        end();
      },
    };
  }

  lock(): void {
    this.states.lock();
  }

  logout(): Promise<void> {
    return this.states.logout();
  }

  /** put writes a record as the only writer of group in every tab, with the newest GDK (else "stale-key"). Returns the record text. */
  put(group: string, id: string, plaintext: string | Uint8Array): Promise<string> {
    return this.states.write(group, (h) => this.device.writeRecord(h, id, plaintext));
  }

  /**
   * update reads a record and writes what fn makes of it, both as the only
   * writer of group in every tab: concurrent updates from several tabs
   * each see the one before. Returns the record text written.
   */
  update(group: string, id: string, fn: (old: Bytes | undefined) => string | Uint8Array | Promise<string | Uint8Array>): Promise<string> {
    return this.states.write(group, async (h) => this.device.writeRecord(h, id, await fn(await this.device.readRecord(h, id))));
  }

  /** get reads a record with the group's record keys (older versions through the chain). */
  get(group: string, id: string): Promise<Bytes | undefined> {
    return this.device.readRecord(this.states.keys(group), id);
  }

  /** close detaches from the other tabs; the machines keep their state. */
  close(): void {
    this.states.close();
  }

  async #unlock(secret: SessionSecret, background: boolean, transport: Transport | undefined): Promise<DeviceHandle> {
    if (background || secret === null) {
      if (!background) throw new DeviceError("locked", "a page unlocks with a password, a passkey or a code");
      return { user: null, keys: await this.device.unlockDevice() };
    }
    if (this.user === null) throw new DeviceError("not-enrolled", "no user to unlock on this device");
    if ("code" in secret) {
      const r = await this.device.recover(this.user, secret.code, transport);
      this.#recovery = r;
      return { user: this.user, keys: r.keys };
    }
    this.#recovery = undefined;
    return { user: this.user, keys: await this.device.unlock(this.user, secret) };
  }

  async #openGroup(id: string, dh: DeviceHandle): Promise<GroupHandle> {
    if (dh.keys === undefined) throw new DeviceError("locked", "this tab holds the record keys another tab shared; unlock here to open a group");
    const ring = await this.device.groupKeys(dh.keys, id);
    return { ...(await recordKeysOf(ring)), ring };
  }
}
