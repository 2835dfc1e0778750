// The device key hierarchy of docs/DEVICE.md on IndexedDB.
//
//   password ─PBKDF2─┐
//   passkey ──PRF────┼─► user key (GDK of the user's own key group)
//   unlock code ─────┘        │ record "member-key" (AES-GCM)
//                             ▼
//                   member key (P-256) ─ECDH─► member slots of every group ─► GDKs
//   device key (P-256, non-extractable, IndexedDB) ─ECDH─► device slots ──► GDKs
//
// One slow KDF per password entry or passkey touch unlocks every group.
// What is stored is what the format already makes public: slots, records,
// pinned commitments, ids, versions. Keys live in memory only, in an
// UnlockedKeys, until lock() drops them.

import { type Bytes, copy, hex, unhex } from "./bytes.js";
import { DeviceError, codeOf, fail } from "./errors.js";
import {
  type Slot, MIN_PASSWORD_ITERATIONS, prfInput, encodeBundle, encodeRecord, encodeSlot, parseBundle, parseRecord, parseSlot,
} from "./format.js";
import {
  type GDK, type P256Pair, checkIDText, newGDK, openPasskey, openPassword, openPublic, openUnlock, pickUnlock,
  sealPasskey, sealPassword, sealPublic, sealRecordRaw, sealRecordUnder, openRecordUnder, recordKey,
} from "./gdk.js";
import { DB } from "./idb.js";
import { Keyring } from "./keyring.js";
import type { ConsumedCode, Transport } from "./transport.js";
import { parseCode } from "./unlockcode.js";

const subtle = () => globalThis.crypto.subtle;

/** The record of a user's key group that holds their member key (PKCS#8). */
export const MEMBER_KEY_RECORD = "member-key";

/**
 * DEFAULT_MAX_ITERATIONS: the most PBKDF2 iterations this device runs for
 * one slot. The format allows up to 10,000,000 (seconds of work); a slot
 * above this ceiling is refused with "limit" before any work is done.
 */
export const DEFAULT_MAX_ITERATIONS = 2_000_000;

interface GroupRow {
  group: string;
  slots: string[];
  pins: [number, string][];
  /** newest: the newest GDK version a writer used here (raised under the group's Web Lock); the slots may name a newer one. */
  newest?: number;
  /** dirty: slots made here and not yet pushed; a pull then merges instead of replacing. */
  dirty?: boolean;
  /** cursor: the backend's record cursor after the last pull. */
  cursor?: string;
}

interface UserRow {
  user: string;
  keyGroup: string;
  memberPublic: Bytes;
}

interface RecordRow {
  group: string;
  id: string;
  record: string;
  /** dirty: written here and not yet pushed; a pull does not overwrite it. */
  dirty?: boolean;
}

interface DeviceRow {
  id: string;
  keys: P256Pair;
}

/** The secret that unlocks the user key: one password entry, one passkey touch, or a typed unlock code. */
export type Secret =
  | { password: string }
  | { prf: PasskeyPRF }
  | { code: string };

/**
 * RecordKeys are the non-extractable AES-GCM record keys of one group, by
 * GDK version, and the version new records are sealed under. They read and
 * write records and nothing else: no slot can be opened or sealed with
 * them, so they are what one tab may hand to another (see session.ts).
 */
export interface RecordKeys {
  readonly group: string;
  readonly version: number;
  readonly keys: ReadonlyMap<number, CryptoKey>;
}

/** recordKeysOf derives the record keys of every GDK ring holds (each once per GDK). */
export async function recordKeysOf(ring: Keyring): Promise<RecordKeys> {
  const top = ring.newest();
  if (!top) fail("not-enrolled", "no key of this group is open");
  const keys = new Map<number, CryptoKey>();
  for (const v of ring.versions()) keys.set(v, await recordKey(ring.gdk(v)!));
  return { group: ring.group, version: top.version, keys };
}

/**
 * PasskeyPRF evaluates the PRF of one of the user's passkeys: given each
 * passkey slot's credential and PRF input, it asks the authenticator once
 * (navigator.credentials.get with prf.evalByCredential) and returns the
 * credential used and its output. See passkeyPRF for the WebAuthn call.
 */
export type PasskeyPRF = (requests: { credential: Bytes; input: Bytes }[]) => Promise<{ credential: Uint8Array; output: Uint8Array }>;

export interface DeviceOptions {
  /** The IndexedDB database name (one per app origin and account set). */
  name?: string;
  /**
   * This device's id in device slots (printable ASCII): needed when the
   * database is new; afterwards the id stored with the device key is used
   * (so a service worker opens the device without knowing it).
   */
  deviceId?: string;
  maxIterations?: number;
}

/**
 * UnlockedKeys is what an unlock returns: the trusted GDKs of every group
 * the user (or this device) opened, in memory only. lock() drops them all;
 * lockGroup() drops one group's, and Device.unlockGroup opens it again.
 */
export class UnlockedKeys {
  #rings: Map<string, Keyring> | null;
  #member: P256Pair | null;
  #userKey: Keyring | null;
  /** Groups locked on their own (lockGroup): nothing of theirs is held, and nothing opens them but Device.unlockGroup. */
  readonly #closed = new Set<string>();

  readonly #failures: ReadonlyMap<string, DeviceError>;

  constructor(readonly user: string | null, rings: Map<string, Keyring>, member: P256Pair | null, userKey: Keyring | null, failures: ReadonlyMap<string, DeviceError> = new Map()) {
    this.#rings = rings;
    this.#member = member;
    this.#userKey = userKey;
    this.#failures = failures;
  }

  /**
   * failures lists the groups whose slots did not open (a damaged,
   * substituted or untrusted slot): one group's failure does not keep the
   * user out of the others. Each error has its code.
   */
  failures(): { group: string; error: DeviceError }[] {
    return [...this.#failures].map(([group, error]) => ({ group, error })).sort((a, b) => (a.group < b.group ? -1 : 1));
  }

  get locked(): boolean {
    return this.#rings === null;
  }

  /** groups lists the groups opened. */
  groups(): string[] {
    return [...this.rings().keys()].sort();
  }

  ring(group: string): Keyring {
    const rings = this.rings();
    if (this.#closed.has(group)) fail("locked", "this group is locked");
    const r = rings.get(group);
    if (!r || !r.newest()) fail("not-enrolled", "no key of this group is open");
    return r;
  }

  /** @internal */
  userKeyRing(): Keyring {
    if (this.#userKey === null) fail("locked", "the user key is not open (device-key unlock)");
    return this.#userKey;
  }

  /**
   * memberPublicKey is the SPKI of the user's member key: public, what a
   * device of the user hands the backend (a new device's approval, Rewrap).
   * "locked" after lock() and for device-key keys, which hold no member key.
   */
  async memberPublicKey(): Promise<Bytes> {
    return new Uint8Array(await subtle().exportKey("spki", this.memberKey().publicKey));
  }

  /** @internal */
  memberKey(): P256Pair {
    if (this.#member === null) fail("locked");
    return this.#member;
  }

  private rings(): Map<string, Keyring> {
    if (this.#rings === null) fail("locked");
    return this.#rings;
  }

  /** @internal replace puts a group's newly opened keyring in place of the one held; "locked" for a group locked on its own. */
  replace(ring: Keyring): void {
    const rings = this.rings();
    if (this.#closed.has(ring.group)) {
      // Locked while its slots were being opened (groupKeys): the new ring is dropped too.
      ring.clear();
      fail("locked", "this group is locked");
    }
    const old = rings.get(ring.group);
    if (old && old !== ring) old.clear();
    rings.set(ring.group, ring);
  }

  /** @internal reopen puts back the keyring of a group locked on its own (Device.unlockGroup). */
  reopen(ring: Keyring): void {
    this.rings();
    this.#closed.delete(ring.group);
    this.replace(ring);
  }

  /**
   * lockGroup drops one group's keys (its keyring is cleared, not just
   * forgotten); the other groups stay open. Until Device.unlockGroup opens
   * it again, the group is "locked" for reads, writes and groupKeys (which
   * would otherwise open its slots again on its own). A group these keys
   * never held can be locked too: it then stays shut. "locked" when the
   * keys are locked already.
   */
  lockGroup(group: string): void {
    const rings = this.rings();
    rings.get(group)?.clear();
    rings.delete(group);
    this.#closed.add(group);
  }

  /** groupLocked reports whether group is locked on its own (lockGroup); after lock() every group is. */
  groupLocked(group: string): boolean {
    return this.#rings === null || this.#closed.has(group);
  }

  /** lockedGroups lists the groups locked on their own, sorted. */
  lockedGroups(): string[] {
    this.rings();
    return [...this.#closed].sort();
  }

  /** lock drops every key this object holds; any later use is "locked". */
  lock(): void {
    for (const r of this.#rings?.values() ?? []) r.clear();
    this.#userKey?.clear();
    this.#rings = null;
    this.#member = null;
    this.#userKey = null;
    this.#closed.clear();
  }
}

/** A recovery in progress: the code opened the user key; a new password finishes it. */
export interface Recovery {
  keys: UnlockedKeys;
  report: ConsumedCode;
  /** setPassword seals the new password slot, removes the old ones, pushes the key group's new slots. */
  setPassword(password: string): Promise<void>;
}

export class Device {
  private constructor(
    private readonly db: DB,
    readonly name: string,
    readonly deviceId: string,
    private readonly maxIterations: number,
    private deviceKeys: P256Pair | null,
    /** persistent is false where the browser cannot store a CryptoKey (DataCloneError): the device key then lasts one page. */
    readonly persistent: boolean,
  ) {}

  /** open opens (or creates) the device's database and its non-extractable device key. */
  static async open(opts: DeviceOptions): Promise<Device> {
    const name = opts.name ?? "escrowd-device";
    // Without a device id the caller expects an enrolled device (a service
    // worker): a missing database is not created.
    const db = await DB.open(name, opts.deviceId !== undefined);
    let row = await db.get<DeviceRow>("device", "key");
    let persistent = true;
    if (!row) {
      if (!opts.deviceId) {
        db.close();
        fail("not-enrolled", "a new device needs its device id");
      }
      const keys = (await subtle().generateKey({ name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"])) as CryptoKeyPair;
      row = { id: checkIDText(opts.deviceId), keys: { privateKey: keys.privateKey, publicKey: keys.publicKey } };
      try {
        await db.put("device", [row], "key");
      } catch (e) {
        if (!(e instanceof DOMException && e.name === "DataCloneError")) throw e;
        persistent = false;
      }
    }
    return new Device(db, name, row.id, opts.maxIterations ?? DEFAULT_MAX_ITERATIONS, row.keys, persistent);
  }

  /** devicePublicKey is the SPKI of the device key: the app enrols it as a device recipient (Rewrap, RotateGroupKey). */
  async devicePublicKey(): Promise<Bytes> {
    return new Uint8Array(await subtle().exportKey("spki", this.deviceKey().publicKey));
  }

  private deviceKey(): P256Pair {
    if (!this.deviceKeys) fail("locked", "the device was logged out");
    return this.deviceKeys;
  }

  // ---- enrolment --------------------------------------------------------------

  /**
   * createUser makes a new user's key group on this device: a user key (GDK
   * 1 of keyGroup, pinned here), a member key pair sealed in the record
   * "member-key", and a password slot. It returns the keys, unlocked, and
   * what the backend needs.
   *
   * With escrow (the key group's escrow key, from ProvisionGroup), it also
   * seals the escrow slot and returns the key group's first bundle. Without
   * it, the account can be created at the backend first (it needs the
   * member key made here) and the escrow slot added with addEscrowSlot once
   * the backend has provisioned the key group and relayed its escrow key.
   * Until then enrolment(user).escrow is false and nothing hands out the
   * key group's bundle ("no-escrow"): a bundle without an escrow slot gets
   * no unlock codes, so it is never the one uploaded.
   */
  async createUser(user: string, keyGroup: string, password: string, escrow: EscrowKey): Promise<NewUser & { bundle: string; escrowSlot: string }>;
  async createUser(user: string, keyGroup: string, password: string): Promise<NewUser>;
  async createUser(user: string, keyGroup: string, password: string, escrow?: EscrowKey): Promise<NewUser> {
    checkIDText(user);
    checkIDText(keyGroup);
    if (escrow !== undefined) checkEscrowKey(escrow);
    const uk = await newGDK(keyGroup, 1);
    const member = (await subtle().generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"])) as CryptoKeyPair;
    const pkcs8 = new Uint8Array(await subtle().exportKey("pkcs8", member.privateKey));
    const memberRecord = encodeRecord(await sealRecordRaw(uk, MEMBER_KEY_RECORD, pkcs8));
    const memberKey = { privateKey: await subtle().importKey("pkcs8", pkcs8, { name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]), publicKey: member.publicKey };
    pkcs8.fill(0);
    const memberPublic = new Uint8Array(await subtle().exportKey("spki", member.publicKey));
    const pw = await sealPassword(uk, { key_version: 1, id: user }, password, MIN_PASSWORD_ITERATIONS);
    const escrowSlot = escrow === undefined ? undefined : await sealEscrow(uk, escrow);
    const slots = escrowSlot === undefined ? [pw] : [pw, escrowSlot];
    await this.db.put("groups", [{ group: keyGroup, slots, pins: [[1, hex(uk.commit)]] } satisfies GroupRow]);
    await this.db.put("users", [{ user, keyGroup, memberPublic } satisfies UserRow]);
    await this.db.put("records", [{ group: keyGroup, id: MEMBER_KEY_RECORD, record: memberRecord } satisfies RecordRow]);
    const ring = new Keyring(keyGroup);
    ring.pin(1, uk.commit);
    ring.add({ group: keyGroup, gdk_version: 1 }, uk);
    const made: NewUser = { keys: new UnlockedKeys(user, new Map(), memberKey, ring), memberPublic, commit: uk.commit, memberRecord };
    if (escrowSlot !== undefined) {
      made.escrowSlot = escrowSlot;
      made.bundle = encodeBundle(keyGroup, slots);
    }
    return made;
  }

  /**
   * enrolment tells, while locked, how far a user's enrolment on this
   * device got: escrow is false between a createUser without an escrow key
   * and addEscrowSlot (a sign-up to finish: unlock, then addEscrowSlot).
   */
  async enrolment(user: string): Promise<UserEnrolment> {
    const u = await this.db.get<UserRow>("users", user);
    if (!u) fail("not-enrolled", "no such user on this device");
    const g = await this.db.get<GroupRow>("groups", u.keyGroup);
    if (!g) fail("not-enrolled", "the user's key group is not on this device");
    return { user, keyGroup: u.keyGroup, escrow: hasEscrow(g) };
  }

  /**
   * addEscrowSlot seals the user key of keys (a password, passkey or code
   * unlock, or createUser's keys) to the key group's escrow key and stores
   * the slot; it returns the slot and the key group's bundle, now complete,
   * to upload. It refuses a key group that already has an escrow slot
   * ("has-escrow": the backend re-seals escrow slots to newer escrow key
   * versions itself), keys without the user key ("locked") and an escrow
   * key that is not one ("suite", "range", "point"), before storing
   * anything.
   */
  async addEscrowSlot(keys: UnlockedKeys, escrow: EscrowKey): Promise<{ escrowSlot: string; bundle: string }> {
    checkEscrowKey(escrow);
    const ring = keys.userKeyRing();
    const g = await this.db.get<GroupRow>("groups", ring.group);
    if (!g) fail("not-enrolled", "the user's key group is not on this device");
    if (hasEscrow(g)) fail("has-escrow", "the key group has an escrow slot");
    const escrowSlot = await sealEscrow(ring.newest()!, escrow);
    // The sealing awaited: another tab may have added one meanwhile.
    const now = await this.db.get<GroupRow>("groups", ring.group);
    if (!now) fail("not-enrolled", "the user's key group is not on this device");
    if (hasEscrow(now)) fail("has-escrow", "the key group has an escrow slot");
    const slots = [...now.slots, escrowSlot];
    await this.db.put("groups", [{ ...now, slots } satisfies GroupRow]);
    return { escrowSlot, bundle: encodeBundle(ring.group, slots) };
  }

  /**
   * keyGroupBundle is the user's key group as stored here, to upload (a
   * sign-up whose upload did not finish). "no-escrow" while the key group
   * has no escrow slot.
   */
  async keyGroupBundle(user: string): Promise<string> {
    const u = await this.db.get<UserRow>("users", user);
    if (!u) fail("not-enrolled", "no such user on this device");
    const g = await this.db.get<GroupRow>("groups", u.keyGroup);
    if (!g) fail("not-enrolled", "the user's key group is not on this device");
    if (!hasEscrow(g)) fail("no-escrow", "the key group has no escrow slot yet");
    return encodeBundle(g.group, g.slots);
  }

  /**
   * addGroup stores a group's bundle (from the sync backend) and the
   * commitments to pin (from the enrolment channel). Slots are checked as
   * the format decodes them; nothing is opened. The backend's bundle
   * replaces the slots held here (so a new unlock epoch retires the old
   * unlock slots), unless slots made here are still to be pushed: then the
   * two are merged until the push.
   */
  async addGroup(group: string, bundle: string, pins: { version: number; commit: string | Uint8Array }[] = []): Promise<void> {
    const b = parseBundle(bundle);
    if (b.group !== group) fail("binding", "the bundle is of another group");
    const old = await this.db.get<GroupRow>("groups", group);
    const merged = new Map<string, null>((old?.dirty ? old.slots : []).map((s) => [s, null]));
    // Password and passkey slots are the device's own: while some are to be
    // pushed, the backend's (older) ones are not taken back.
    for (const s of b.slots) if (!old?.dirty || (s.kind !== "password" && s.kind !== "passkey-prf")) merged.set(encodeSlot(s), null);
    const ring = new Keyring(group);
    for (const [v, c] of old?.pins ?? []) ring.pin(v, unhex(c));
    for (const p of pins) ring.pin(p.version, typeof p.commit === "string" ? unhex(p.commit) : p.commit);
    const row: GroupRow = { group, slots: [...merged.keys()], pins: ring.pins().map(([v, c]) => [v, hex(c)]), dirty: old?.dirty ?? false };
    if (old?.cursor !== undefined) row.cursor = old.cursor;
    if (old?.newest !== undefined) row.newest = old.newest;
    await this.db.put("groups", [row]);
  }

  /** importUser stores a user's row when the key group comes from the backend (a second device). */
  async importUser(user: string, keyGroup: string, memberRecord: string, memberPublic: Uint8Array): Promise<void> {
    const r = parseRecord(memberRecord);
    if (r.group !== keyGroup || r.id !== MEMBER_KEY_RECORD) fail("record", "not the member key record of this key group");
    await this.db.put("records", [{ group: keyGroup, id: MEMBER_KEY_RECORD, record: memberRecord } satisfies RecordRow]);
    await this.db.put("users", [{ user, keyGroup, memberPublic: copy(memberPublic) } satisfies UserRow]);
  }

  /** groupIds lists the groups stored on this device, but the users' own key groups. */
  async groupIds(): Promise<string[]> {
    const keyGroups = new Set((await this.db.all<UserRow>("users")).map((u) => u.keyGroup));
    return (await this.db.all<GroupRow>("groups")).map((g) => g.group).filter((g) => !keyGroups.has(g)).sort();
  }

  /** users lists the users enrolled on this device. */
  async users(): Promise<string[]> {
    return (await this.db.all<UserRow>("users")).map((u) => u.user);
  }

  // ---- unlock -----------------------------------------------------------------

  /**
   * unlock opens the user key with one secret (one PBKDF2, or one PRF
   * call), the member key with it, and then every group's member slots
   * with ECDH: every group the user belongs to, one slow KDF.
   */
  async unlock(user: string, secret: Secret): Promise<UnlockedKeys> {
    const { keys } = await this.openUser(user, secret);
    return keys;
  }

  /**
   * unlockDevice opens every group enrolled on this device with the device
   * key, without the user (background sync). The groups in locked are not
   * opened at all: the keys returned hold them locked (lockGroup), so a
   * group the user locked stays shut when the device keys are made again.
   */
  async unlockDevice(locked: Iterable<string> = []): Promise<UnlockedKeys> {
    const rings = new Map<string, Keyring>();
    const failures = new Map<string, DeviceError>();
    const key = this.deviceKey();
    const shut = new Set(locked);
    for (const g of await this.db.all<GroupRow>("groups")) {
      if (shut.has(g.group)) continue;
      try {
        const ring = await this.openGroup(g, "device", this.deviceId, key);
        if (ring.newest()) rings.set(g.group, ring);
      } catch (e) {
        if (!(e instanceof DeviceError)) throw e;
        failures.set(g.group, e);
      }
    }
    const keys = new UnlockedKeys(null, rings, null, null, failures);
    for (const g of shut) keys.lockGroup(g);
    return keys;
  }

  /**
   * unlockGroup opens again one group locked on its own (lockGroup), and
   * only that one: its member slots with the member key the user's keys
   * still hold, or with device keys (unlockDevice) its device slots. No
   * password is asked: while the user is unlocked the member key, which
   * opens every group, is in memory anyway; a group lock keeps that
   * group's GDKs out of memory and its notes out of reach of the app, and
   * lock() is what asks for the password again. An open group is opened
   * afresh (its newest slots). Errors: "locked" (the keys are locked),
   * "not-enrolled" (the group is not here, or no slot of it opens for this
   * user or device; the group stays locked), and the slot errors of an
   * unlock ("untrusted", "damaged"...).
   */
  async unlockGroup(keys: UnlockedKeys, group: string): Promise<void> {
    if (keys.locked) fail("locked");
    const g = await this.db.get<GroupRow>("groups", group);
    if (!g) fail("not-enrolled", "the group is not on this device");
    const ring = keys.user === null
      ? await this.openGroup(g, "device", this.deviceId, this.deviceKey())
      : await this.openGroup(g, "member", keys.user, keys.memberKey());
    if (!ring.newest()) fail("not-enrolled", "no slot of this group opens for this device or user");
    // Locked meanwhile (lock() during the ECDH): the ring is dropped.
    if (keys.locked) {
      ring.clear();
      fail("locked");
    }
    keys.reopen(ring);
  }

  private async openUser(user: string, secret: Secret): Promise<{ keys: UnlockedKeys; report?: ConsumedCode }> {
    const u = await this.db.get<UserRow>("users", user);
    if (!u) fail("not-enrolled", "no such user on this device");
    const g = await this.db.get<GroupRow>("groups", u.keyGroup);
    if (!g) fail("not-enrolled", "the user's key group is not on this device");
    const ring = this.pinned(g);
    const slots = g.slots.map((t) => parseSlot(t)).filter((s) => s.id === user);
    const want = { group: u.keyGroup, id: user };
    let opened: { slot: Slot; gdk: GDK };
    let report: ConsumedCode | undefined;
    if ("password" in secret) {
      const pw = newestFirst(slots.filter((s) => s.kind === "password"));
      if (!pw.length) fail("not-enrolled", "no password is set on this device");
      this.checkCost(pw[0]!);
      opened = await openPassword(pw[0]!, want, secret.password);
    } else if ("prf" in secret) {
      const pk = newestFirst(slots.filter((s) => s.kind === "passkey-prf"));
      if (!pk.length) fail("not-enrolled", "no passkey is set up on this device");
      const res = await secret.prf(pk.map((s) => ({ credential: s.credential!, input: prfInput(s.kdf!.salt) })));
      const slot = pk.find((s) => hex(s.credential!) === hex(res.credential));
      if (!slot) fail("wrong-secret", "the authenticator used another passkey");
      opened = await openPasskey(slot, want, async () => res.output);
    } else {
      const unlock = slots.filter((s) => s.kind === "unlock");
      const code = parseCode(secret.code);
      const pick = pickUnlock(unlock, want, code.index);
      code.secret.fill(0);
      if (pick) this.checkCost(pick);
      opened = await openUnlock(unlock, want, secret.code);
      report = { group: u.keyGroup, user, epoch: opened.slot.unlock!.epoch, index: opened.slot.unlock!.index };
    }
    ring.add(opened.slot, opened.gdk);
    const member = await this.openMemberKey(ring, u);
    const rings = new Map<string, Keyring>();
    const failures = new Map<string, DeviceError>();
    for (const row of await this.db.all<GroupRow>("groups")) {
      if (row.group === u.keyGroup) continue;
      try {
        const r = await this.openGroup(row, "member", user, member);
        if (r.newest()) rings.set(row.group, r);
      } catch (e) {
        if (!(e instanceof DeviceError)) throw e;
        failures.set(row.group, e);
      }
    }
    return { keys: new UnlockedKeys(user, rings, member, ring, failures), ...(report ? { report } : {}) };
  }

  private checkCost(s: Slot): void {
    const n = s.kdf?.iterations ?? 0;
    if (n > this.maxIterations) fail("limit", "a slot asks for " + n + " PBKDF2 iterations; this device runs at most " + this.maxIterations);
  }

  private pinned(g: GroupRow): Keyring {
    const ring = new Keyring(g.group);
    for (const [v, c] of g.pins) ring.pin(v, unhex(c));
    return ring;
  }

  private async openMemberKey(ring: Keyring, u: UserRow): Promise<P256Pair> {
    const row = await this.db.get<RecordRow>("records", [u.keyGroup, MEMBER_KEY_RECORD]);
    if (!row) fail("not-enrolled", "the member key of this user is not on this device");
    const { plaintext } = await ring.openRecord(row.record);
    try {
      const privateKey = await subtle().importKey("pkcs8", plaintext, { name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]);
      const publicKey = await subtle().importKey("spki", u.memberPublic, { name: "ECDH", namedCurve: "P-256" }, true, []);
      return { privateKey, publicKey };
    } catch {
      fail("damaged", "the member key record does not hold a P-256 key");
    } finally {
      plaintext.fill(0);
    }
  }

  // openGroup opens a group's member or device slots for id, oldest version
  // first, keeping each GDK the keyring trusts (pinned or chained up), and
  // then reaches older versions down the chain slots.
  private async openGroup(g: GroupRow, kind: "member" | "device", id: string, key: P256Pair): Promise<Keyring> {
    const ring = this.pinned(g);
    const slots = g.slots.map((t) => parseSlot(t));
    const chains = new Map(slots.filter((s) => s.kind === "chain").map((s) => [s.gdk_version, s]));
    const mine = slots.filter((s) => s.kind === kind && s.id === id && s.suite === "ecdh-p256").sort((a, b) => a.gdk_version - b.gdk_version);
    for (const s of mine) {
      if (ring.gdk(s.gdk_version)) continue;
      let o;
      try {
        o = await openPublic(s, { group: g.group, id }, key);
      } catch (e) {
        if (e instanceof DeviceError && e.code === "wrong-key") continue; // a slot to another key of this id (an older device)
        throw e;
      }
      if (ring.pinned(s.gdk_version)) ring.add(s, o.gdk);
      else {
        const chain = chains.get(s.gdk_version - 1);
        if (chain && ring.gdk(s.gdk_version - 1)) await ring.adoptNewer(s, o.gdk, chain);
        else fail("untrusted", "GDK " + s.gdk_version + " of a group is neither pinned nor chained");
      }
    }
    const top = ring.newest();
    if (top) for (let v = top.version - 1; v >= 1; v--) {
      if (ring.gdk(v)) continue;
      const c = chains.get(v);
      if (!c) break;
      await ring.adoptOlder(c);
    }
    return ring;
  }

  // ---- passkeys and passwords --------------------------------------------------

  /** addPasskey seals the user key to a passkey's PRF (a new passkey-prf slot) and returns the key group's bundle to push. */
  async addPasskey(keys: UnlockedKeys, credential: Uint8Array, prf: (input: Bytes) => Promise<Uint8Array>): Promise<string> {
    const ring = keys.userKeyRing();
    const uk = ring.newest()!;
    const slot = await sealPasskey(uk, { key_version: 1, id: keys.user! }, credential, (input) => prf(input));
    return this.addKeySlots(ring.group, [slot], () => false);
  }

  /** setPassword replaces the user's password slots with one for password, and returns the key group's bundle to push. */
  async setPassword(keys: UnlockedKeys, password: string): Promise<string> {
    const ring = keys.userKeyRing();
    const uk = ring.newest()!;
    const slot = await sealPassword(uk, { key_version: 1, id: keys.user! }, password, MIN_PASSWORD_ITERATIONS);
    return this.addKeySlots(ring.group, [slot], (s) => s.kind === "password" && s.id === keys.user);
  }

  private async addKeySlots(group: string, add: string[], drop: (s: Slot) => boolean): Promise<string> {
    const g = await this.db.get<GroupRow>("groups", group);
    if (!g) fail("not-enrolled");
    if (!hasEscrow(g)) fail("no-escrow", "the key group has no escrow slot yet: addEscrowSlot first");
    const slots = g.slots.filter((t) => !drop(parseSlot(t))).concat(add);
    await this.db.put("groups", [{ ...g, slots, dirty: true } satisfies GroupRow]);
    return encodeBundle(group, slots);
  }

  // ---- recovery -----------------------------------------------------------------

  /**
   * recover opens the user key with a typed unlock code and every group
   * with it, and queues the "code consumed" report at once (so that a
   * reload cannot lose it). Recovery.setPassword finishes it.
   */
  async recover(user: string, typed: string, transport?: Transport): Promise<Recovery> {
    const { keys, report } = await this.openUser(user, { code: typed });
    const r = report!;
    await this.db.put("outbox", [{ id: [r.group, r.user, r.epoch, r.index].join("\n"), ...r }]);
    return {
      keys,
      report: report!,
      setPassword: async (password: string) => {
        await this.setPassword(keys, password);
        if (transport) await this.flush(transport);
      },
    };
  }

  /** pending lists the reports not yet sent. */
  async pending(): Promise<ConsumedCode[]> {
    return (await this.db.all<ConsumedCode & { id: string }>("outbox")).map(({ group, user, epoch, index }) => ({ group, user, epoch, index }));
  }

  /**
   * flush pushes the bundles of groups with slots made here, then sends the
   * queued reports, in order; what fails (offline) stays queued for the
   * next flush. Returns how many reports were sent.
   */
  async flush(transport: Transport): Promise<number> {
    const keyGroups = new Set((await this.db.all<UserRow>("users")).map((u) => u.keyGroup));
    for (const g of await this.db.all<GroupRow>("groups")) {
      if (!g.dirty) continue;
      if (keyGroups.has(g.group) && !hasEscrow(g)) fail("no-escrow", "a key group without an escrow slot is not pushed");
      try {
        await transport.pushBundle(g.group, encodeBundle(g.group, g.slots));
      } catch {
        return 0;
      }
      const now = await this.db.get<GroupRow>("groups", g.group);
      if (now && now.slots.join() === g.slots.join()) await this.db.put("groups", [{ ...now, dirty: false } satisfies GroupRow]);
    }
    let sent = 0;
    for (const r of await this.db.all<ConsumedCode & { id: string }>("outbox")) {
      try {
        await transport.reportConsumedCode({ group: r.group, user: r.user, epoch: r.epoch, index: r.index });
      } catch {
        break;
      }
      await this.db.delete("outbox", r.id);
      sent++;
    }
    return sent;
  }

  // ---- records ------------------------------------------------------------------

  /** newestVersion is the highest GDK version any stored slot of the group names (0 if none): public, readable while locked. */
  async newestVersion(group: string): Promise<number> {
    const g = await this.db.get<GroupRow>("groups", group);
    let v = 0;
    for (const t of g?.slots ?? []) v = Math.max(v, parseSlot(t).gdk_version);
    return v;
  }

  /**
   * putRecord seals plaintext under the group's newest GDK and stores it;
   * returns the record text (to push). It refuses ("stale") to write under
   * a GDK older than the newest version this device's storage names: keys
   * unlocked before a rotation reached this device (here or in another tab)
   * must be unlocked again first.
   */
  async putRecord(keys: UnlockedKeys, group: string, id: string, plaintext: string | Uint8Array): Promise<string> {
    const gdk = keys.ring(group).newest()!;
    const newest = await this.newestVersion(group);
    if (gdk.version < newest) fail("stale", "the keys hold GDK " + gdk.version + ", the device has slots of GDK " + newest);
    const text = encodeRecord(await sealRecordRaw(gdk, id, plaintext));
    await this.db.put("records", [{ group, id, record: text, dirty: true } satisfies RecordRow]);
    return text;
  }

  /** getRecord reads a record with the GDK of its version (older versions through the chain). */
  async getRecord(keys: UnlockedKeys, group: string, id: string): Promise<Bytes | undefined> {
    const row = await this.db.get<RecordRow>("records", [group, id]);
    if (!row) return undefined;
    const r = parseRecord(row.record);
    if (r.group !== group || r.id !== id) fail("record", "a record stored under another group or id");
    return (await keys.ring(group).openRecord(r)).plaintext;
  }

  /** importRecords stores records pulled from the backend after checking their form (not their keys). */
  async importRecords(group: string, texts: string[]): Promise<void> {
    const rows: RecordRow[] = [];
    for (const t of texts) {
      const r = parseRecord(t);
      if (r.group !== group) fail("record", "a record of another group");
      // A record written here and not yet pushed wins over the backend's.
      if ((await this.db.get<RecordRow>("records", [group, r.id]))?.dirty) continue;
      rows.push({ group, id: r.id, record: t });
    }
    await this.db.put("records", rows);
  }

  /**
   * sync is one round with the backend: push what was made here (slots,
   * records written offline, consumed-code reports), then pull every
   * group the user is enrolled in (bundles with their pins, records after
   * the last cursor). A transport error ends the round; what was not sent
   * stays queued for the next.
   */
  async sync(transport: Transport, user: string): Promise<{ reports: number; records: number; groups: number }> {
    const reports = await this.flush(transport);
    if ((await this.pending()).length) fail("offline", "the backend did not take the queued reports");
    let records = 0;
    const dirty = (await this.db.all<RecordRow>("records")).filter((r) => r.dirty);
    const byGroup = new Map<string, RecordRow[]>();
    for (const r of dirty) byGroup.set(r.group, [...(byGroup.get(r.group) ?? []), r]);
    for (const [group, rows] of byGroup) {
      await transport.pushRecords(group, rows.map((r) => r.record));
      for (const r of rows) {
        const now = await this.db.get<RecordRow>("records", [r.group, r.id]);
        if (now?.record === r.record) await this.db.put("records", [{ ...now, dirty: false } satisfies RecordRow]);
      }
      records += rows.length;
    }
    const enrolments = await transport.fetchEnrolments(user);
    for (const e of enrolments) {
      const b = await transport.pullBundle(e.group);
      if (b) await this.addGroup(e.group, b, e.pins);
      const g = await this.db.get<GroupRow>("groups", e.group);
      const pulled = await transport.pullRecords(e.group, g?.cursor);
      await this.importRecords(e.group, pulled.records);
      if (g && pulled.cursor !== undefined) await this.db.put("groups", [{ ...(await this.db.get<GroupRow>("groups", e.group))!, cursor: pulled.cursor } satisfies GroupRow]);
    }
    return { reports, records, groups: enrolments.length };
  }

  /**
   * versions is the newest GDK version of each group, stored with the
   * group's slots in this database (so a logout's wipe deletes it): the
   * higher of what a writer raised it to and what the stored slots name.
   * newest is undefined when the group is not on the device, or the
   * database was deleted (another tab's logout). Call both under the
   * group's Web Lock (DeviceStates.write does).
   */
  readonly versions = {
    newest: async (group: string): Promise<number | undefined> => {
      if (this.db.closed) return undefined;
      const g = await this.db.get<GroupRow>("groups", group);
      if (!g) return undefined;
      let v = g.newest ?? 0;
      for (const t of g.slots) v = Math.max(v, parseSlot(t).gdk_version);
      return v;
    },
    raise: async (group: string, version: number): Promise<void> => {
      const g = await this.db.get<GroupRow>("groups", group);
      if (!g) fail("not-enrolled", "the group is not on this device");
      if ((g.newest ?? 0) < version) await this.db.put("groups", [{ ...g, newest: version } satisfies GroupRow]);
    },
  };

  /**
   * groupKeys returns group's keyring from keys, opening the group's slots
   * again when the device's storage names a newer GDK than keys hold (a
   * sync brought a rotation after the unlock); the new ring replaces the
   * old in keys. With user keys the member slots are opened, with device
   * keys (unlockDevice) the device slots. "locked" for a group locked on
   * its own (lockGroup): only unlockGroup opens it again.
   */
  async groupKeys(keys: UnlockedKeys, group: string): Promise<Keyring> {
    if (keys.groupLocked(group)) fail("locked", "this group is locked");
    let held: Keyring | undefined;
    try {
      held = keys.ring(group);
    } catch (e) {
      if (codeOf(e) !== "not-enrolled") throw e;
    }
    const newest = await this.newestVersion(group);
    if (held && held.newest()!.version >= newest) return held;
    const g = await this.db.get<GroupRow>("groups", group);
    if (!g) fail("not-enrolled", "the group is not on this device");
    const ring = keys.user === null
      ? await this.openGroup(g, "device", this.deviceId, this.deviceKey())
      : await this.openGroup(g, "member", keys.user, keys.memberKey());
    if (!ring.newest()) fail("not-enrolled", "no slot of this group opens for this device or user");
    keys.replace(ring);
    return ring;
  }

  /**
   * writeRecord seals plaintext under rk's version and stores it; returns
   * the record text (to push). Refuses ("stale") a version older than the
   * newest this device's storage names, as putRecord does.
   */
  async writeRecord(rk: RecordKeys, id: string, plaintext: string | Uint8Array): Promise<string> {
    const newest = (await this.versions.newest(rk.group)) ?? 0;
    if (rk.version < newest) fail("stale", "the keys hold GDK " + rk.version + ", the device has GDK " + newest);
    const key = rk.keys.get(rk.version);
    if (!key) fail("locked", "no record key of GDK " + rk.version);
    const text = encodeRecord(await sealRecordUnder(key, rk.group, rk.version, id, plaintext));
    await this.db.put("records", [{ group: rk.group, id, record: text, dirty: true } satisfies RecordRow]);
    return text;
  }

  /** readRecord reads a record with the record key of its version; "record" when rk holds none of that version. */
  async readRecord(rk: RecordKeys, id: string): Promise<Bytes | undefined> {
    const row = await this.db.get<RecordRow>("records", [rk.group, id]);
    if (!row) return undefined;
    const r = parseRecord(row.record);
    if (r.group !== rk.group || r.id !== id) fail("record", "a record stored under another group or id");
    const key = rk.keys.get(r.gdk_version);
    if (!key) fail("record", "no held key of GDK " + r.gdk_version + " of this group");
    return (await openRecordUnder(key, r)).plaintext;
  }

  async recordIds(group: string): Promise<string[]> {
    const rows = await this.db.all<RecordRow>("records", IDBKeyRange.bound([group, ""], [group, "\uffff"]));
    return rows.map((r) => r.id);
  }

  /** close closes the database; the keys a caller holds stay until it locks them. */
  close(): void {
    this.db.close();
  }

  /** logout deletes this device's database (slots, records, the device key) and drops the device key. */
  async logout(): Promise<void> {
    this.deviceKeys = null;
    this.db.close();
    await DB.wipe(this.name);
  }
}

/** The daemon's escrow public key of a group, as the sync backend relays ProvisionGroup's escrow_key. */
export interface EscrowKey {
  /** SubjectPublicKeyInfo (DER). */
  spki: Uint8Array;
  suite: "ecdh-p256" | "rsa-oaep-sha1" | "rsa-oaep-sha256";
  /** The escrow key version (1 or more). */
  version: number;
}

/** What createUser returns: the new user's keys, unlocked, and what the sync backend needs. */
export interface NewUser {
  keys: UnlockedKeys;
  /** The member public key (SPKI): the backend's Rewrap target for every group of the user. */
  memberPublic: Bytes;
  /** The commitment of the user key (GDK 1 of the key group), for the enrolment channel. */
  commit: Bytes;
  /** The record "member-key" of the key group, to upload. */
  memberRecord: string;
  /** The key group's first bundle (password and escrow slots), when createUser was given the escrow key; else addEscrowSlot returns it. */
  bundle?: string;
  escrowSlot?: string;
}

/** How far a user's enrolment on this device got (Device.enrolment). */
export interface UserEnrolment {
  user: string;
  keyGroup: string;
  /** Whether the key group holds an escrow slot: false until addEscrowSlot finishes a sign-up begun without the escrow key. */
  escrow: boolean;
}

function hasEscrow(g: GroupRow): boolean {
  return g.slots.some((t) => parseSlot(t).kind === "escrow");
}

function checkEscrowKey(e: EscrowKey): void {
  if (e === null || typeof e !== "object") fail("type", "the escrow key is not an object");
  if (e.suite !== "ecdh-p256" && e.suite !== "rsa-oaep-sha1" && e.suite !== "rsa-oaep-sha256") fail("suite", "not an escrow suite");
  if (!Number.isSafeInteger(e.version) || e.version < 1 || e.version > 0xffffffff) fail("range", "the escrow key version");
  if (!(e.spki instanceof Uint8Array) || e.spki.length === 0) fail("type", "the escrow key is not SPKI bytes");
}

/** sealEscrow seals gdk to the escrow key; a key that does not import as its suite's is "point". */
async function sealEscrow(gdk: GDK, e: EscrowKey): Promise<string> {
  try {
    return await sealPublic("escrow", { key_version: e.version }, e.suite, e.spki, gdk);
  } catch (err) {
    if (err instanceof DeviceError) throw err;
    throw new DeviceError("point", "the escrow key is not a public key of its suite", { cause: err });
  }
}

function newestFirst(slots: Slot[]): Slot[] {
  return slots.sort((a, b) => b.gdk_version - a.gdk_version);
}
