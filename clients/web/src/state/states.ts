// The device: its own key machine and one machine per group, tied
// together (the groups open with the device's keys, and lock and wipe with
// it), to the other tabs of the origin (BroadcastChannel) and to the one
// writer per group rule (Web Locks).

import type { Clock } from "./clock.js";
import { systemClock } from "./clock.js";
import { StateError } from "./errors.js";
import { type Locks, defaultLocks, withDeviceExclusive, withGroupWriter } from "./locks.js";
import { KeyMachine, type ChangeOrigin, type StateChange, type UnlockWork } from "./machine.js";
import type { MarkerStore } from "./marker.js";
import { type HandleCodec, assertShareable } from "./share.js";
import { type Channel, type TabMessage, defaultChannel, newTabId, readMessage } from "./tabs.js";

/**
 * The newest group key (GDK) version stored on the device, per group. The
 * record store implements it in the same IndexedDB database as the
 * records, so that logout's wipe deletes it too. Both methods are called
 * under the group's Web Lock only.
 */
export interface VersionStore {
  /** The newest version stored; undefined when the group is not on the device (wiped, never enrolled). */
  newest(group: string): Promise<number | undefined>;
  /** Records version as the group's newest. */
  raise(group: string, version: number): Promise<void>;
}

export interface DeviceStatesOptions<S, DH, GH> {
  /** Opens the device's keys with a password, a PRF output…: one slow KDF for all groups. */
  readonly unlock: UnlockWork<S, DH>;
  /** Opens one group's keys with the device's. Throws a coded error when it cannot (no slot: "not-enrolled"). */
  readonly openGroup: (group: string, device: DH, signal: AbortSignal) => Promise<GH>;
  /** The GDK version a group handle writes with. */
  readonly groupVersion: (keys: GH) => number;
  readonly versions: VersionStore;
  /** Deletes everything stored for the device: run by logout under the exclusive device lock. */
  readonly wipe: () => Promise<void>;
  /** Lock after this long without activity in any tab; 0 or absent: never. */
  readonly idleMs?: number;
  readonly clock?: Clock;
  readonly marker?: MarkerStore | null;
  /** "wiped" when the device holds no enrolment. Default "locked". */
  readonly initial?: "locked" | "wiped";
  /** Default: a BroadcastChannel; null: this tab alone. */
  readonly channel?: Channel | null;
  /** Default: navigator.locks. */
  readonly locks?: Locks | null;
  /** How keys cross to other tabs. Without a codec a scope's unlock stays in its tab (lock and logout still cross). */
  readonly share?: { readonly device?: HandleCodec<DH>; readonly group?: HandleCodec<GH> };
  readonly drop?: { readonly device?: (h: DH) => void; readonly group?: (h: GH) => void };
  /**
   * "ui" (default): a page the user works in. "background": a service
   * worker that opens groups with the device key and no user. A background
   * DeviceStates never posts its keys (they would unlock the pages without the
   * user's secret), and neither follows nor sends unlock, lock and
   * activity; it follows logout and key versions, and writes under the
   * same locks.
   */
  readonly role?: "ui" | "background";
}

/** What DeviceStates subscribers receive. */
export type StatesEvent =
  | { readonly type: "state"; readonly change: StateChange }
  /** A group's newest key version rose; a handle older than it can no longer write. */
  | { readonly type: "version"; readonly group: string; readonly version: number; readonly origin: ChangeOrigin }
  /** The codec failed or its wire form was refused (StateError "unshareable"): the other tabs stay locked. */
  | { readonly type: "share-refused"; readonly scope: string; readonly error: unknown };

export const DEVICE_SCOPE = "device";
export const groupScope = (group: string): string => "group:" + group;

export class DeviceStates<S, DH, GH> {
  readonly machine: KeyMachine<S, DH>;
  readonly tab = newTabId();
  readonly #opts: DeviceStatesOptions<S, DH, GH>;
  readonly #groups = new Map<string, KeyMachine<DH, GH>>();
  readonly #known = new Map<string, number>();
  readonly #listeners = new Set<(e: StatesEvent) => void>();
  readonly #channel: Channel | undefined;
  readonly #locks: Locks | undefined;
  readonly #clock: Clock;
  readonly #onMessage = (ev: MessageEvent) => void this.#receive(ev.data);
  #lastPosted = -Infinity;
  readonly #ui: boolean;

  constructor(opts: DeviceStatesOptions<S, DH, GH>) {
    this.#opts = opts;
    this.#clock = opts.clock ?? systemClock;
    this.#ui = (opts.role ?? "ui") === "ui";
    this.machine = new KeyMachine<S, DH>({
      scope: DEVICE_SCOPE,
      unlock: opts.unlock,
      clock: this.#clock,
      ...(opts.idleMs !== undefined ? { idleMs: opts.idleMs } : {}),
      ...(opts.marker !== undefined ? { marker: opts.marker } : {}),
      ...(opts.initial !== undefined ? { initial: opts.initial } : {}),
      ...(opts.drop?.device ? { drop: opts.drop.device } : {}),
    });
    this.machine.on((c) => this.#onDevice(c));
    this.#channel = opts.channel === null ? undefined : (opts.channel ?? defaultChannel());
    this.#locks = opts.locks === null ? undefined : (opts.locks ?? defaultLocks());
    this.#channel?.addEventListener("message", this.#onMessage);
    this.#post({ t: "hello" });
  }

  get state() {
    return this.machine.state;
  }

  on(listener: (e: StatesEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }

  /**
   * The machine of group, made on first use. A group added while the device
   * is unlocked opens at once.
   */
  group(id: string): KeyMachine<DH, GH> {
    let g = this.#groups.get(id);
    if (g !== undefined) return g;
    g = new KeyMachine<DH, GH>({
      scope: groupScope(id),
      unlock: (dh, signal) => this.#opts.openGroup(id, dh, signal),
      clock: this.#clock,
      marker: null,
      initial: this.machine.state === "wiped" ? "wiped" : "locked",
      ...(this.#opts.drop?.group ? { drop: this.#opts.drop.group } : {}),
    });
    g.on((c) => this.#onGroup(id, c));
    this.#groups.set(id, g);
    if (this.machine.state === "unlocked") this.#open(id);
    return g;
  }

  groups(): string[] {
    return [...this.#groups.keys()];
  }

  /**
   * Unlocks the device with secret, then opens every group. Resolves when
   * the device is unlocked and every group has settled (each unlocked or
   * failed on its own); rejects as KeyMachine.unlock does.
   */
  async unlock(secret: S): Promise<void> {
    await this.machine.unlock(secret);
    await this.settled();
  }

  /** Resolves once no group is unlocking. */
  async settled(): Promise<void> {
    for (;;) {
      const pending = [...this.#groups.values()].filter((g) => g.state === "unlocking");
      if (pending.length === 0) return;
      await Promise.all(pending.map((g) => new Promise<void>((r) => {
        const off = g.on((c) => {
          if (c.to !== "unlocking") {
            off();
            r();
          }
        });
      })));
    }
  }

  /**
   * The open keys of group, counted as activity. Throws StateError
   * "locked" or "wiped" when the device or the group is not unlocked
   * (the device's idle deadline included).
   */
  keys(group: string): GH {
    this.machine.keys();
    const g = this.#groups.get(group);
    if (g === undefined) throw new StateError("locked", { state: "locked", detail: groupScope(group) });
    return g.keys();
  }

  /**
   * Opens group again with the device's keys: after a sync brought it a
   * slot it lacked (failed, "not-enrolled") or a newer key version.
   * Resolves when the group is unlocked; rejects with its unlock error, or
   * StateError "locked" when the device is not unlocked.
   */
  async refreshGroup(id: string): Promise<void> {
    const dk = this.machine.keys();
    const g = this.group(id);
    if (g.state === "unlocking") {
      const to = await new Promise<string>((resolve) => {
        const off = g.on((c) => {
          if (c.to !== "unlocking") {
            off();
            resolve(c.to);
          }
        });
      });
      if (to === "unlocked") return;
      throw g.failure?.cause ?? new StateError(to === "wiped" ? "wiped" : "locked", { detail: groupScope(id) });
    }
    g.lock();
    await g.unlock(dk);
  }

  /** KeyMachine.pending on the device machine: a step a reload must not leave half done. */
  pending(step: string): () => void {
    return this.machine.pending(step);
  }

  /** Locks the device and every group, in every tab. */
  lock(): void {
    const was = this.machine.state;
    this.machine.lock();
    if (was === "unlocked" || was === "unlocking") this.#post({ t: "locked", scope: DEVICE_SCOPE });
  }

  /** Locks one group in every tab; the device stays unlocked. */
  lockGroup(id: string): void {
    const g = this.#groups.get(id);
    if (g === undefined || g.state !== "unlocked") return;
    g.lock();
    this.#post({ t: "locked", scope: groupScope(id) });
  }

  /**
   * Logs out: every tab drops its keys at once (this one, then the others
   * on the channel); then, once no writer holds a group lock anywhere, the
   * device's storage is deleted. A write queued behind the wipe finds the
   * group gone (VersionStore.newest is undefined) and fails "wiped".
   */
  async logout(): Promise<void> {
    // Wiped already: another tab logged out and deletes the storage. A second
    // wipe here could land after a new enrolment and delete it.
    if (this.machine.state === "wiped") return;
    this.machine.logout();
    this.#post({ t: "logout" });
    if (this.#locks !== undefined) await withDeviceExclusive(this.#locks, () => this.#opts.wipe());
    else await this.#opts.wipe();
  }

  /** After a new enrolment on a wiped device (this tab; others reload). */
  enrol(): void {
    this.machine.enrol();
  }

  /** Marks user activity, here and (at most every quarter of the idle time) in the other tabs. */
  touch(): void {
    this.machine.touch();
    const now = this.#clock.now();
    const every = this.#opts.idleMs ? this.#opts.idleMs / 4 : Infinity;
    if (now - this.#lastPosted >= every) {
      this.#lastPosted = now;
      this.#post({ t: "activity" });
    }
  }

  /** The newest key version of group this tab has heard of (0: none). */
  knownVersion(group: string): number {
    return this.#known.get(group) ?? 0;
  }

  /**
   * Runs fn as the only writer of group in every tab, with the group's open
   * keys. Refuses (StateError) when the group is not unlocked ("locked",
   * "wiped"), or when its keys are older than the newest version stored or
   * announced ("stale-key": the group is then reopened; retry after
   * whenUnlocked). Keys newer than the stored version are recorded as the
   * newest, under the lock, and announced.
   */
  async write<T>(group: string, fn: (keys: GH) => Promise<T>, signal?: AbortSignal): Promise<T> {
    const g = this.#groups.get(group);
    if (g === undefined) throw new StateError("locked", { state: "locked", detail: groupScope(group) });
    this.#checkFresh(group, this.keys(group));
    this.touch();
    const locks = this.#locks;
    if (locks === undefined) throw new Error("navigator.locks is not available: writes need the Web Locks API");
    return withGroupWriter(locks, group, async () => {
      const keys = this.keys(group);
      const have = this.#opts.groupVersion(keys);
      const newest = await this.#opts.versions.newest(group);
      if (newest === undefined) throw new StateError("wiped", { state: g.state, detail: groupScope(group) });
      if (have < newest) {
        this.#learn(group, newest, "local");
        this.#checkFresh(group, keys);
      }
      if (have > newest) {
        await this.#opts.versions.raise(group, have);
        this.#learn(group, have, "local");
        this.#post({ t: "version", group, version: have });
      }
      return fn(keys);
    }, signal);
  }

  /**
   * Records that group's keys at version were adopted outside a write (a
   * sync pulled a rotation): stored under the group lock, then announced.
   */
  async publishVersion(group: string, version: number): Promise<void> {
    const locks = this.#locks;
    if (locks === undefined) throw new Error("navigator.locks is not available: writes need the Web Locks API");
    await withGroupWriter(locks, group, async () => {
      const newest = await this.#opts.versions.newest(group);
      if (newest === undefined) throw new StateError("wiped", { detail: groupScope(group) });
      if (version > newest) await this.#opts.versions.raise(group, version);
    });
    this.#learn(group, version, "local");
    this.#post({ t: "version", group, version });
  }

  /** Detaches from the channel. The machines keep their state. */
  close(): void {
    this.#channel?.removeEventListener("message", this.#onMessage);
    this.#channel?.close();
  }

  #checkFresh(group: string, keys: GH): void {
    const have = this.#opts.groupVersion(keys);
    const known = this.knownVersion(group);
    if (have >= known) return;
    this.#reopen(group);
    throw new StateError("stale-key", { state: "unlocked", detail: groupScope(group) + " v" + have + " < v" + known });
  }

  #learn(group: string, version: number, origin: ChangeOrigin): void {
    if (version <= this.knownVersion(group)) return;
    this.#known.set(group, version);
    this.#emit({ type: "version", group, version, origin });
    const g = this.#groups.get(group);
    const keys = g?.held();
    if (keys !== undefined && this.#opts.groupVersion(keys) < version) this.#reopen(group);
  }

  /** Opens group with the device's keys; its failure shows in its state. */
  #open(id: string): void {
    const g = this.#groups.get(id);
    if (g === undefined || this.machine.state !== "unlocked") return;
    const dk = this.machine.held();
    if (dk === undefined || (g.state !== "locked" && g.state !== "failed")) return;
    g.unlock(dk).catch(() => {});
  }

  /** Drops a group's keys and opens it again, to reach its newest version. */
  #reopen(id: string): void {
    const g = this.#groups.get(id);
    if (g === undefined || g.state !== "unlocked") return;
    g.lock();
    this.#open(id);
  }

  #onDevice(c: StateChange): void {
    this.#emit({ type: "state", change: c });
    if (c.origin === "local" && (c.event === "succeed")) this.#postUnlocked(DEVICE_SCOPE, this.#opts.share?.device, this.machine);
    if (c.origin === "local" && c.event === "idle") this.#post({ t: "locked", scope: DEVICE_SCOPE });
    for (const [id, g] of this.#groups) {
      switch (c.to) {
        case "unlocked":
          this.#open(id);
          break;
        case "locked":
          if (c.from === "wiped") {
            if (g.state === "wiped") g.enrol();
          } else g.lock();
          break;
        case "failed":
        case "unlocking":
          g.lock();
          break;
        case "wiped":
          g.logout();
          break;
      }
    }
  }

  #onGroup(id: string, c: StateChange): void {
    this.#emit({ type: "state", change: c });
    if (c.origin === "local" && c.event === "succeed") {
      const g = this.#groups.get(id);
      if (g !== undefined) this.#postUnlocked(groupScope(id), this.#opts.share?.group, g);
    }
  }

  /**
   * Posts scope's keys in the codec's wire form. toWire may return a
   * promise (deriving a non-extractable key is asynchronous); the keys are
   * posted only if the scope is still unlocked when it settles.
   */
  #postUnlocked<X, H>(scope: string, codec: HandleCodec<H> | undefined, m: KeyMachine<X, H>): void {
    const handle = m.held();
    if (codec === undefined || handle === undefined) return;
    void Promise.resolve(codec.toWire(handle)).then((keys) => {
      if (m.held() !== handle) return;
      assertShareable(keys);
      this.#post({ t: "unlocked", scope, keys });
    }).catch((err: unknown) => {
      // A codec that fails, or whose wire form holds bytes or an extractable
      // key, shares nothing: this tab stays unlocked, the others locked.
      this.#emit({ type: "share-refused", scope, error: err });
    });
  }

  async #receive(data: unknown): Promise<void> {
    const m = readMessage(data);
    if (m === undefined || m.from === this.tab) return;
    if (!this.#ui && uiOnly.has(m.t)) return;
    switch (m.t) {
      case "hello":
        this.#postUnlocked(DEVICE_SCOPE, this.#opts.share?.device, this.machine);
        for (const [id, g] of this.#groups) this.#postUnlocked(groupScope(id), this.#opts.share?.group, g);
        return;
      case "activity":
        this.machine.noteActivity(this.#clock.now());
        return;
      case "logout":
        this.machine.remoteLogout();
        return;
      case "version":
        this.#learn(m.group, m.version, "remote");
        return;
      case "locked":
        if (m.scope === DEVICE_SCOPE) this.machine.remoteLock();
        else this.#groupOf(m.scope)?.remoteLock();
        return;
      case "unlocked":
        await this.#adopt(m);
        return;
    }
  }

  async #adopt(m: Extract<TabMessage, { t: "unlocked" }>): Promise<void> {
    if (!("keys" in m)) return;
    try {
      if (m.scope === DEVICE_SCOPE) {
        const codec = this.#opts.share?.device;
        if (codec === undefined || this.machine.state === "unlocked" || this.machine.state === "wiped") return;
        const h = await codec.fromWire(m.keys);
        this.machine.adopt(h);
        return;
      }
      const g = this.#groupOf(m.scope);
      const codec = this.#opts.share?.group;
      // A group opens only inside an unlocked device: a group message that
      // overtook a device lock is ignored.
      if (g === undefined || codec === undefined || this.machine.state !== "unlocked" || g.state === "unlocked") return;
      const h = await codec.fromWire(m.keys);
      if (this.machine.state === "unlocked") g.adopt(h);
      else this.#opts.drop?.group?.(h);
    } catch {
      // A tab that cannot read another's keys stays as it is: its user unlocks it.
    }
  }

  #groupOf(scope: string): KeyMachine<DH, GH> | undefined {
    return scope.startsWith("group:") ? this.#groups.get(scope.slice(6)) : undefined;
  }

  #post(body: DistributiveOmit<TabMessage, "v" | "from">): void {
    if (!this.#ui && uiOnly.has(body.t)) return;
    this.#channel?.postMessage({ v: 1, from: this.tab, ...body });
  }

  #emit(e: StatesEvent): void {
    for (const l of [...this.#listeners]) {
      try {
        l(e);
      } catch (err) {
        this.#clock.setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }
}

/** The messages only pages exchange: a background DeviceStates neither sends nor follows them. */
const uiOnly: ReadonlySet<TabMessage["t"]> = new Set(["hello", "unlocked", "locked", "activity"]);

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
