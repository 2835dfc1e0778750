// Group data keys: opening every slot kind ("Opening a slot"), sealing the
// kinds a device makes, chains and records. A GDK is held as an AES-CBC
// CryptoKey (usage encrypt) from which DK derives every key; its raw
// bytes are in JavaScript memory only while a slot is verified, and are
// zeroed right after. The CryptoKey is extractable because WebCrypto's
// wrapKey (sealing a slot or a chain) needs it; nothing else exports it.

import { type Bytes, concat, copy, equal, hex, random, u8, utf8 } from "./bytes.js";
import { DeviceError, fail } from "./errors.js";
import {
  type Input, type Kind, type SealedRecord, type Slot, type Suite,
  GDK_SIZE, IV_SIZE, LABEL_BIND, LABEL_CHAIN, LABEL_RECORD, MAX_ID, MIN_PASSWORD_ITERATIONS, PASSKEY_LABEL, PASSKEY_SALT_SIZE, SALT_SIZE, WITH_ID,
  bindMessage, checkID, checkValue, commitment, dk, ecdhInfo, encodeRecord, encodeSlot, hkdf, hmacSign, isPublicSuite, parseRecord, parseSlot, pbkdf2, prfInput, recordAAD,
} from "./format.js";
import { parseCode } from "./unlockcode.js";

const subtle = () => globalThis.crypto.subtle;

/** A trace collects a slot's intermediate values (hex) for the vectors; never pass one in production. */
export type Trace = Record<string, string>;

/** One group data key of one version of one group. */
export class GDK {
  constructor(readonly group: string, readonly version: number, readonly commit: Bytes, readonly key: CryptoKey) {
    Object.freeze(this);
  }

  derive(label: Bytes): Promise<Bytes> {
    return dk(this.key, label);
  }
}

/** Whom a slot is opened for: the group and, for the kinds with an id, the recipient or user. */
export interface Want {
  group: string;
  id?: string;
}

export interface Opened {
  slot: Slot;
  gdk: GDK;
}

// gdkFromRaw makes a GDK of raw bytes, which it zeroes.
async function gdkFromRaw(group: string, version: number, raw: Bytes): Promise<GDK> {
  try {
    const c = await commitment(group, version, raw);
    const key = await subtle().importKey("raw", raw, "AES-CBC", true, ["encrypt"]);
    return new GDK(group, version, c, key);
  } finally {
    raw.fill(0);
  }
}

/** newGDK makes a random GDK (a group's creator, a rotation, or a test). */
export function newGDK(group: string, version: number): Promise<GDK> {
  return gdkFromRaw(group, version, random(GDK_SIZE));
}

/** importGDK takes raw GDK bytes (vectors and tests; a device never gets a GDK in clear). The bytes are copied. */
export function importGDK(group: string, version: number, raw: Uint8Array): Promise<GDK> {
  return gdkFromRaw(group, version, copy(raw));
}

/** exportGDK returns a GDK's raw bytes: for the vectors only. */
export async function exportGDK(gdk: GDK): Promise<Bytes> {
  return new Uint8Array(await subtle().exportKey("raw", gdk.key));
}

// verify is steps 4 and 5 of "Opening a slot": the commitment, then the
// binding. It returns the GDK and zeroes raw.
async function verify(s: Slot, raw: Bytes, trace?: Trace): Promise<GDK> {
  try {
    if (raw.length !== GDK_SIZE) fail("commitment", "the slot holds " + raw.length + " bytes, not a 32-byte GDK");
    const c = await commitment(s.group, s.gdk_version, raw);
    if (!equal(c, s.commit)) fail("commitment", "the commitment does not name the key in the slot");
    const gdk = await gdkFromRaw(s.group, s.gdk_version, copy(raw));
    const kb = await gdk.derive(LABEL_BIND);
    const m = bindMessage(s);
    const bind = await hmacSign(kb, m);
    kb.fill(0);
    if (trace) Object.assign(trace, { message: hex(m), bind: hex(bind) });
    if (!equal(bind, s.bind)) fail("binding", "the binding does not verify");
    return gdk;
  } finally {
    raw.fill(0);
  }
}

/** SlotInput is a slot as text or bytes, or as parseSlot returned it (encoded and decoded again before use). */
export type SlotInput = Input | Slot;

export function parseAny(input: SlotInput): Slot {
  if (typeof input === "object" && !(input instanceof Uint8Array) && !(input instanceof ArrayBuffer)) return parseSlot(encodeSlot(input));
  return parseSlot(input);
}

// checkWant is step 2: the slot names the group being opened and, for the
// kinds with an id, this device's recipient id or user.
function checkWant(s: Slot, want: Want): void {
  if (!want || typeof want.group !== "string") throw new TypeError("want.group is required");
  if (s.group !== want.group) fail("binding", "the slot belongs to another group");
  if ((s.id ?? "") !== (want.id ?? "")) fail("binding", "the slot belongs to another recipient");
}

function checkKind(s: Slot, kinds: readonly Kind[]): void {
  if (!kinds.includes(s.kind)) fail("binding", "a " + s.kind + " slot, not a " + kinds.join(" or ") + " slot");
}

async function unwrapRaw(kekBytes: Bytes, wrapped: Bytes): Promise<Bytes> {
  const kek = await subtle().importKey("raw", kekBytes, "AES-KW", false, ["unwrapKey"]);
  const k = await subtle().unwrapKey("raw", wrapped, kek, "AES-KW", "AES-CBC", true, ["encrypt"]);
  return new Uint8Array(await subtle().exportKey("raw", k));
}

/** An ECDH P-256 key pair held as CryptoKeys: the private key may be non-extractable (a device key). */
export interface P256Pair {
  privateKey: CryptoKey;
  publicKey: CryptoKey;
}

/** A private key to open escrow, member and device slots: PKCS#8 bytes (RSA or P-256), or a P-256 pair. */
export type PrivateKey = Uint8Array | P256Pair;

export async function rawPublic(pub: CryptoKey): Promise<Bytes> {
  return new Uint8Array(await subtle().exportKey("raw", pub));
}

function b64url(s: string): Bytes {
  const t = s.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(t + "===".slice((t.length + 3) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

async function p256FromPKCS8(pkcs8: Uint8Array): Promise<{ priv: CryptoKey; rpk: Bytes }> {
  try {
    const k = await subtle().importKey("pkcs8", copy(pkcs8), { name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
    const jwk = await subtle().exportKey("jwk", k);
    const rpk = concat(u8(4), b64url(jwk.x!), b64url(jwk.y!));
    const priv = await subtle().importKey("pkcs8", copy(pkcs8), { name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]);
    return { priv, rpk };
  } catch {
    fail("wrong-key", "the private key is not a P-256 key");
  }
}

/**
 * openPublic opens an escrow, member or device slot with a private key
 * (PKCS#8 RSA for the rsa-oaep suites; PKCS#8 or a CryptoKey pair for
 * ecdh-p256). want is {group, id} (no id for an escrow slot).
 */
export async function openPublic(input: SlotInput, want: Want, key: PrivateKey, trace?: Trace): Promise<Opened> {
  const s = parseAny(input);
  if (!isPublicSuite(s.suite)) fail("wrong-key", "a " + s.kind + " slot is not opened with a private key");
  checkWant(s, want);
  let raw: Bytes;
  if (s.suite === "ecdh-p256") {
    const { priv, rpk } = key instanceof Uint8Array ? await p256FromPKCS8(key) : { priv: key.privateKey, rpk: await rawPublic(key.publicKey) };
    let peer: CryptoKey;
    try {
      peer = await subtle().importKey("raw", s.epk!, { name: "ECDH", namedCurve: "P-256" }, false, []);
    } catch {
      fail("point", "epk is not a P-256 point");
    }
    let z: Bytes;
    try {
      z = new Uint8Array(await subtle().deriveBits({ name: "ECDH", public: peer }, priv, 256));
    } catch {
      fail("wrong-key", "the private key is not a P-256 ECDH key");
    }
    const info = await ecdhInfo(s.epk!, rpk);
    const k = await dk(z, info);
    if (trace) Object.assign(trace, { z: hex(z), info: hex(info), key: hex(k) });
    z.fill(0);
    try {
      raw = await unwrapRaw(k, s.wrapped);
    } catch {
      fail("wrong-key", "the " + s.kind + " slot does not open with this key");
    } finally {
      k.fill(0);
    }
  } else {
    if (!(key instanceof Uint8Array)) fail("wrong-key", "an RSA slot does not open with a P-256 key");
    const hash = s.suite === "rsa-oaep-sha1" ? "SHA-1" : "SHA-256";
    let priv: CryptoKey;
    try {
      priv = await subtle().importKey("pkcs8", copy(key), { name: "RSA-OAEP", hash }, false, ["decrypt"]);
    } catch {
      fail("wrong-key", "the private key is not an RSA key");
    }
    try {
      raw = new Uint8Array(await subtle().decrypt({ name: "RSA-OAEP" }, priv, s.wrapped));
    } catch {
      fail("wrong-key", "the " + s.kind + " slot does not open with this key");
    }
  }
  return { slot: s, gdk: await verify(s, raw, trace) };
}

// openSecret: the check value, then AES-KW, then steps 4 and 5. key is zeroed.
async function openSecret(s: Slot, key: Bytes, wrong: "wrong-secret" | "wrong-code", trace?: Trace): Promise<Opened> {
  try {
    const check = await checkValue(key);
    if (trace) Object.assign(trace, { key: hex(key), check: hex(check) });
    if (!equal(check, s.check!)) fail(wrong);
    let raw: Bytes;
    try {
      raw = await unwrapRaw(key, s.wrapped);
    } catch {
      fail("damaged", "the wrapped key fails its integrity check");
    }
    return { slot: s, gdk: await verify(s, raw, trace) };
  } finally {
    key.fill(0);
  }
}

/** pickUnlock returns, among a user's unlock slots, the one a code's index names (newest epoch first), or null. */
export function pickUnlock(inputs: readonly SlotInput[], want: Want, index: number): Slot | null {
  let pick: Slot | null = null;
  for (const input of inputs) {
    const s = parseAny(input);
    checkKind(s, ["unlock"]);
    checkWant(s, want);
    if (s.unlock!.index === index && (pick === null || s.unlock!.epoch > pick.unlock!.epoch)) pick = s;
  }
  return pick;
}

/**
 * openUnlock opens the unlock slot the typed code names, so a code costs
 * one PBKDF2. want is {group, id: user}. Errors: not-a-code, mistyped,
 * wrong-code (no such slot, or another check value), damaged, and the
 * classes of decoding and of steps 2, 4 and 5.
 */
export async function openUnlock(inputs: readonly SlotInput[], want: Want, typed: string, trace?: Trace): Promise<Opened> {
  const code = parseCode(typed);
  try {
    const pick = pickUnlock(inputs, want, code.index);
    if (pick === null) fail("wrong-code", "no unlock slot of this index");
    if (trace) trace["secret"] = hex(code.secret);
    const key = await pbkdf2(code.secret, pick.kdf!.salt, pick.kdf!.iterations!);
    return await openSecret(pick, key, "wrong-code", trace);
  } finally {
    code.secret.fill(0);
  }
}

/** openPassword opens a password slot with the password as typed (NFC). */
export async function openPassword(input: SlotInput, want: Want, password: string, trace?: Trace): Promise<Opened> {
  const s = parseAny(input);
  checkKind(s, ["password"]);
  checkWant(s, want);
  const secret = utf8(password.normalize("NFC"));
  if (trace) trace["secret"] = hex(secret);
  try {
    return await openSecret(s, await pbkdf2(secret, s.kdf!.salt, s.kdf!.iterations!), "wrong-secret", trace);
  } finally {
    secret.fill(0);
  }
}

/** PRF returns the WebAuthn PRF output (32 bytes) of the slot's credential for input (eval.first). */
export type PRF = (input: Bytes, slot: Slot) => Promise<Uint8Array | ArrayBuffer>;

/** openPasskey opens a passkey-prf slot with the PRF of its credential. */
export async function openPasskey(input: SlotInput, want: Want, prf: PRF, trace?: Trace): Promise<Opened> {
  const s = parseAny(input);
  checkKind(s, ["passkey-prf"]);
  checkWant(s, want);
  const pin = prfInput(s.kdf!.salt);
  if (trace) trace["prf_input"] = hex(pin);
  const out = copy(await prf(pin, s));
  try {
    if (out.length !== 32) fail("wrong-secret", "the PRF output is " + out.length + " bytes, not 32");
    return await openSecret(s, await hkdf(out, s.kdf!.salt, PASSKEY_LABEL), "wrong-secret", trace);
  } finally {
    out.fill(0);
  }
}

/**
 * openChain returns the GDK a chain slot holds (version gdk_version), given
 * the GDK of version gdk_version + 1. The GDK given is used whatever its
 * version: a chain slot whose versions were rewritten then fails its
 * commitment (step 4), as the vectors pin.
 */
export async function openChain(input: SlotInput, group: string, newer: GDK, trace?: Trace): Promise<Opened> {
  const s = parseAny(input);
  checkKind(s, ["chain"]);
  checkWant(s, { group });
  if (!(newer instanceof GDK)) throw new TypeError("openChain takes the newer GDK");
  const kc = await newer.derive(LABEL_CHAIN);
  if (trace) trace["key"] = hex(kc);
  let raw: Bytes;
  try {
    raw = await unwrapRaw(kc, s.wrapped);
  } catch {
    fail("wrong-key", "the chain slot of GDK " + s.gdk_version + " does not open with this GDK");
  } finally {
    kc.fill(0);
  }
  return { slot: s, gdk: await verify(s, raw, trace) };
}

// ---- sealing -------------------------------------------------------------------

type Unsealed = Omit<Slot, "commit" | "bind" | "wrapped"> & Partial<Pick<Slot, "wrapped">>;

// seal fills the commitment and the binding of s for gdk and encodes it.
async function seal(s: Unsealed, gdk: GDK): Promise<string> {
  if (s.group !== gdk.group || s.gdk_version !== gdk.version) throw new Error("the slot names another GDK than the one sealed");
  const full = { ...s, commit: gdk.commit, wrapped: s.wrapped! } as Omit<Slot, "bind">;
  const kb = await gdk.derive(LABEL_BIND);
  const bind = await hmacSign(kb, bindMessage(full));
  kb.fill(0);
  return encodeSlot({ ...full, bind });
}

/** To names a slot's recipient: its key version and, for the kinds with an id, the id or user. */
export interface To {
  key_version: number;
  id?: string;
}

function base(kind: Kind, suite: Suite, gdk: GDK, to: To): Unsealed {
  const s: Unsealed = { kind, suite, group: gdk.group, gdk_version: gdk.version, key_version: to.key_version };
  if (WITH_ID.includes(kind)) s.id = checkIDText(to.id ?? "");
  return s;
}

async function wrapKW(kekBytes: Bytes, gdk: GDK): Promise<Bytes> {
  const kek = await subtle().importKey("raw", kekBytes, "AES-KW", false, ["wrapKey"]);
  return new Uint8Array(await subtle().wrapKey("raw", gdk.key, kek, "AES-KW"));
}

/** sealPublic wraps gdk to a public key (SPKI DER, or a P-256 CryptoKey): kind escrow, member or device. */
export async function sealPublic(kind: "escrow" | "member" | "device", to: To, suite: Suite, pub: Uint8Array | CryptoKey, gdk: GDK): Promise<string> {
  const s = base(kind, suite, gdk, to);
  if (suite === "ecdh-p256") {
    const pk = pub instanceof Uint8Array ? await subtle().importKey("spki", copy(pub), { name: "ECDH", namedCurve: "P-256" }, true, []) : pub;
    const rpk = await rawPublic(pk);
    const eph = await subtle().generateKey({ name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]);
    s.epk = await rawPublic(eph.publicKey);
    const z = new Uint8Array(await subtle().deriveBits({ name: "ECDH", public: pk }, eph.privateKey, 256));
    const k = await dk(z, await ecdhInfo(s.epk, rpk));
    z.fill(0);
    s.wrapped = await wrapKW(k, gdk);
    k.fill(0);
  } else if (suite === "rsa-oaep-sha1" || suite === "rsa-oaep-sha256") {
    if (!(pub instanceof Uint8Array)) throw new TypeError("an RSA slot takes an SPKI");
    const hash = suite === "rsa-oaep-sha1" ? "SHA-1" : "SHA-256";
    const pk = await subtle().importKey("spki", copy(pub), { name: "RSA-OAEP", hash }, false, ["wrapKey"]);
    s.wrapped = new Uint8Array(await subtle().wrapKey("raw", gdk.key, pk, { name: "RSA-OAEP" }));
  } else {
    fail("suite", "not a public-key suite");
  }
  return seal(s, gdk);
}

async function sealWithKey(s: Unsealed, gdk: GDK, key: Bytes): Promise<string> {
  try {
    s.check = await checkValue(key);
    s.wrapped = await wrapKW(key, gdk);
  } finally {
    key.fill(0);
  }
  return seal(s, gdk);
}

/** sealPassword wraps gdk under PBKDF2 of the password (NFC); to.id is the user. */
export async function sealPassword(gdk: GDK, to: To, password: string, iterations = MIN_PASSWORD_ITERATIONS): Promise<string> {
  const s = base("password", "pbkdf2-sha256-aes-kw", gdk, to);
  s.kdf = { salt: random(SALT_SIZE), iterations };
  const secret = utf8(password.normalize("NFC"));
  const key = await pbkdf2(secret, s.kdf.salt, iterations);
  secret.fill(0);
  return sealWithKey(s, gdk, key);
}

/** sealPasskey wraps gdk under HKDF of the PRF output of credential for a fresh salt's PRF input. */
export async function sealPasskey(gdk: GDK, to: To, credential: Uint8Array, prf: PRF): Promise<string> {
  const s = base("passkey-prf", "hkdf-sha256-aes-kw", gdk, to);
  s.credential = copy(credential);
  s.kdf = { salt: random(PASSKEY_SALT_SIZE) };
  const out = copy(await prf(prfInput(s.kdf.salt), s as Slot));
  try {
    if (out.length !== 32) fail("no-prf", "the PRF output is " + out.length + " bytes, not 32");
    return await sealWithKey(s, gdk, await hkdf(out, s.kdf.salt, PASSKEY_LABEL));
  } finally {
    out.fill(0);
  }
}

/** sealChain wraps GDK v (older) under the chain key of GDK v + 1 (newer). */
export async function sealChain(older: GDK, newer: GDK): Promise<string> {
  if (older.group !== newer.group || newer.version !== older.version + 1) throw new Error("a chain links GDK v to v + 1 of one group");
  const s: Unsealed = { kind: "chain", suite: "aes-kw", group: older.group, gdk_version: older.version, key_version: newer.version };
  const kc = await newer.derive(LABEL_CHAIN);
  s.wrapped = await wrapKW(kc, older);
  kc.fill(0);
  return seal(s, older);
}

// ---- records --------------------------------------------------------------------

const recordKeys = new WeakMap<GDK, Promise<CryptoKey>>();
// The keys already derived, to use without an await on a record's path.
const recordKeysReady = new WeakMap<GDK, CryptoKey>();

/** recordKey is the AES-GCM key of gdk's records (non-extractable), derived once per GDK and kept while the GDK is. */
export function recordKey(gdk: GDK): Promise<CryptoKey> {
  let k = recordKeys.get(gdk);
  if (!k) {
    k = gdk.derive(LABEL_RECORD).then(async (rk) => {
      try {
        const key = await subtle().importKey("raw", rk, "AES-GCM", false, ["encrypt", "decrypt"]);
        recordKeysReady.set(gdk, key);
        return key;
      } finally {
        rk.fill(0);
      }
    });
    recordKeys.set(gdk, k);
  }
  return k;
}

export interface OpenedRecord {
  group: string;
  id: string;
  gdk_version: number;
  plaintext: Bytes;
}

// The record path below runs once per record: it returns the promise of
// the WebCrypto call itself (no async frame of its own) and builds each
// object once, since at 1 KiB the fixed work per record shows next to
// AES-GCM's.

/** openRecord decrypts a record with the GDK of its version; "record" if it does not decrypt. */
export function openRecord(input: Input | SealedRecord, gdk: GDK): Promise<OpenedRecord> {
  try {
    const r = typeof input === "object" && "ct" in input ? input : parseRecord(input);
    if (!(gdk instanceof GDK)) throw new TypeError("openRecord takes a GDK");
    if (r.group !== gdk.group || r.gdk_version !== gdk.version) fail("record", "the record is not of GDK " + gdk.version + " of this group");
    const key = recordKeysReady.get(gdk);
    return key ? openRecordUnder(key, r) : recordKey(gdk).then((k) => openRecordUnder(k, r));
  } catch (e) {
    return Promise.reject(e);
  }
}

/**
 * openRecordUnder decrypts a record with the record key of its group and
 * version (recordKey of that GDK): for a tab that holds the non-extractable
 * record keys another tab shared, and no GDK. The caller picks the key by
 * r.group and r.gdk_version; the AAD binds them.
 */
export function openRecordUnder(key: CryptoKey, r: SealedRecord): Promise<OpenedRecord> {
  let p: Promise<ArrayBuffer>;
  try {
    p = subtle().decrypt({ name: "AES-GCM", iv: r.iv, additionalData: recordAAD(r.group, r.id, r.gdk_version), tagLength: 128 }, key, r.ct);
  } catch (e) {
    return Promise.reject(e);
  }
  return p.then(
    (pt) => ({ group: r.group, id: r.id, gdk_version: r.gdk_version, plaintext: new Uint8Array(pt) }),
    () => fail("record", "the record does not decrypt with GDK version " + r.gdk_version),
  );
}

/** sealRecordRaw encrypts plaintext as record id of gdk's group and version, with a fresh IV. */
export function sealRecordRaw(gdk: GDK, id: string, plaintext: string | Uint8Array): Promise<SealedRecord> {
  const key = recordKeysReady.get(gdk);
  return key ? sealRecordUnder(key, gdk.group, gdk.version, id, plaintext) : recordKey(gdk).then((k) => sealRecordUnder(k, gdk.group, gdk.version, id, plaintext));
}

/** sealRecordUnder is sealRecordRaw with the record key of group's GDK version (see openRecordUnder). */
export function sealRecordUnder(key: CryptoKey, group: string, version: number, id: string, plaintext: string | Uint8Array): Promise<SealedRecord> {
  let p: Promise<ArrayBuffer>;
  let iv: Bytes;
  try {
    // WebCrypto copies its input at the call; a copy here is needed only for
    // a view of a SharedArrayBuffer, which it does not take.
    const pt = typeof plaintext === "string" ? utf8(plaintext) : plaintext.buffer instanceof ArrayBuffer ? (plaintext as Bytes) : copy(plaintext);
    checkIDText(id);
    iv = random(IV_SIZE);
    p = subtle().encrypt({ name: "AES-GCM", iv, additionalData: recordAAD(group, id, version), tagLength: 128 }, key, pt);
  } catch (e) {
    return Promise.reject(e);
  }
  return p.then((ct) => ({ group, id, gdk_version: version, iv, ct: new Uint8Array(ct) }));
}

/** sealRecord is sealRecordRaw encoded as the format's record text. */
export async function sealRecord(gdk: GDK, id: string, plaintext: string | Uint8Array): Promise<string> {
  return encodeRecord(await sealRecordRaw(gdk, id, plaintext));
}

export function checkIDText(id: string): string {
  if (typeof id !== "string" || id.length < 1 || id.length > MAX_ID) fail("range", "an id is 1 to 128 bytes");
  return checkID("id", id);
}

export { DeviceError };
