// Format v2 (docs/FORMAT.md): its limits, its byte strings and functions,
// and the decoders of slots, bundles and records in the document's
// decoding order. Every failure is a DeviceError with the document's class.

import { type Bytes, concat, equal, hex, lp16, lp8, u32, u8, utf8 } from "./bytes.js";
import { DeviceError, fail } from "./errors.js";
import * as sj from "./strictjson.js";

export const VERSION = 2;

export const MAX_SLOT_SIZE = 8192;
export const MAX_BUNDLE_SIZE = 1048576;
export const MAX_SLOTS = 256;
export const MAX_RECORD_SIZE = 4194304;
export const MAX_ID = 128;
export const MAX_VERSION = 2 ** 31 - 1;
export const MAX_CREDENTIAL = 1023;
export const MAX_INDEX = 31;
export const MIN_UNLOCK_ITERATIONS = 65536;
export const MIN_PASSWORD_ITERATIONS = 600000;
export const MAX_ITERATIONS = 10000000;
export const SALT_SIZE = 16;
export const PASSKEY_SALT_SIZE = 32;
export const CHECK_SIZE = 8;
export const COMMIT_SIZE = 32;
export const BIND_SIZE = 32;
export const KW_SIZE = 40;
export const GDK_SIZE = 32;
export const IV_SIZE = 12;
export const TAG_SIZE = 16;

export type Kind = "escrow" | "member" | "device" | "unlock" | "password" | "passkey-prf" | "chain";
export type Suite = "ecdh-p256" | "rsa-oaep-sha1" | "rsa-oaep-sha256" | "pbkdf2-sha256-aes-kw" | "hkdf-sha256-aes-kw" | "aes-kw";

/** A decoded slot. Optional fields are present exactly when the kind and suite have them. */
export interface Slot {
  kind: Kind;
  suite: Suite;
  group: string;
  gdk_version: number;
  key_version: number;
  id?: string;
  credential?: Bytes;
  epk?: Bytes;
  kdf?: { salt: Bytes; iterations?: number };
  unlock?: { epoch: number; index: number };
  check?: Bytes;
  commit: Bytes;
  wrapped: Bytes;
  bind: Bytes;
}

export interface Bundle {
  group: string;
  slots: Slot[];
}

export interface SealedRecord {
  group: string;
  id: string;
  gdk_version: number;
  iv: Bytes;
  ct: Bytes;
}

const subtle = () => globalThis.crypto.subtle;

// ---- labels and functions --------------------------------------------------

function label32(s: string): Bytes {
  const l = new Uint8Array(32);
  l.set(utf8(s));
  return l;
}

export const LABEL_RECORD = label32("escrowd v2 record key");
export const LABEL_CHAIN = label32("escrowd v2 chain key");
export const LABEL_BIND = label32("escrowd v2 bind key");
const COMMIT_LABEL = "escrowd v2 gdk commitment";
const BIND_LABEL = "escrowd v2 slot";
const ECDH_LABEL = "escrowd v2 ecdh-p256";
const CHECK_LABEL = "escrowd v2 key check";
export const PASSKEY_LABEL = "escrowd v2 passkey-prf";
const RECORD_LABEL = "escrowd v2 record";

/**
 * dk is DK(K, L) = AES-256(K, L[0:16]) || AES-256(K, L[16:32]): with
 * AES-CBC, a zero IV and one block, the first output block is AES(K, block).
 * key is an AES-CBC CryptoKey with usage encrypt, or 32 raw bytes.
 */
export async function dk(key: CryptoKey | Bytes, label: Bytes): Promise<Bytes> {
  if (label.length !== 32) throw new RangeError("a DK label is 32 bytes");
  let k: CryptoKey;
  if (key instanceof Uint8Array) {
    if (key.length !== 32) throw new RangeError("DK takes an AES-256 key");
    k = await subtle().importKey("raw", key, "AES-CBC", false, ["encrypt"]);
  } else {
    k = key;
  }
  const iv = new Uint8Array(16);
  const a = new Uint8Array(await subtle().encrypt({ name: "AES-CBC", iv }, k, label.subarray(0, 16)));
  const b = new Uint8Array(await subtle().encrypt({ name: "AES-CBC", iv }, k, label.subarray(16, 32)));
  return concat(a.subarray(0, 16), b.subarray(0, 16));
}

export function commitmentPrefix(group: string, version: number): Bytes {
  return concat(utf8(COMMIT_LABEL), u8(0), lp16(utf8(group)), u32(version));
}

/** commitment(group, v, GDK) = SHA-256(prefix || GDK). */
export async function commitment(group: string, version: number, raw: Uint8Array): Promise<Bytes> {
  return new Uint8Array(await subtle().digest("SHA-256", concat(commitmentPrefix(group, version), raw)));
}

const empty = new Uint8Array(0);

/** bindMessage is M of "The binding": every field of the slot but bind. */
export function bindMessage(s: Omit<Slot, "bind">): Bytes {
  return concat(
    utf8(BIND_LABEL), u8(0),
    lp8(utf8(s.kind)), lp8(utf8(s.suite)), lp16(utf8(s.group)),
    u32(s.gdk_version), u32(s.key_version),
    lp16(utf8(s.id ?? "")), lp16(s.credential ?? empty), lp8(s.epk ?? empty),
    lp8(s.kdf ? s.kdf.salt : empty), u32(s.kdf?.iterations ?? 0),
    u32(s.unlock ? s.unlock.epoch : 0), u32(s.unlock ? s.unlock.index : 0),
    lp8(s.check ?? empty), lp8(s.commit), lp16(s.wrapped));
}

export async function ecdhInfo(epk: Uint8Array, rpk: Uint8Array): Promise<Bytes> {
  return new Uint8Array(await subtle().digest("SHA-256", concat(utf8(ECDH_LABEL), u8(0), epk, rpk)));
}

/** prfInput is the WebAuthn PRF input (eval.first) of a passkey-prf slot's salt. */
export function prfInput(salt: Uint8Array): Bytes {
  return concat(utf8(PASSKEY_LABEL), u8(0), salt);
}

const RECORD_PREFIX = concat(utf8(RECORD_LABEL), u8(0));

// The AAD's start (label and group) per group: groups are few and their
// records many.
const groupPrefixes = new Map<string, Bytes>();

function groupPrefix(group: string): Bytes {
  let p = groupPrefixes.get(group);
  if (!p) {
    p = concat(RECORD_PREFIX, lp16(utf8(group)));
    if (groupPrefixes.size > 1024) groupPrefixes.clear();
    groupPrefixes.set(group, p);
  }
  return p;
}

/** recordAAD is the AAD of a record: label, group, record id and GDK version (in one allocation: it is on every record's path). */
export function recordAAD(group: string, id: string, version: number): Bytes {
  const p = groupPrefix(group);
  // Ids are printable ASCII (checkID): one byte per character, written
  // straight in; any other string goes through UTF-8.
  let ascii = id.length <= 65535;
  for (let k = 0; ascii && k < id.length; k++) ascii = id.charCodeAt(k) < 0x80;
  const i = ascii ? undefined : utf8(id);
  const n = i ? i.length : id.length;
  if (n > 65535) throw new RangeError("field longer than 65535 bytes");
  const out = new Uint8Array(p.length + 2 + n + 4);
  out.set(p);
  let o = p.length;
  out[o++] = n >>> 8;
  out[o++] = n & 255;
  if (i) out.set(i, o);
  else for (let k = 0; k < n; k++) out[o + k] = id.charCodeAt(k);
  o += n;
  out[o++] = version >>> 24;
  out[o++] = (version >>> 16) & 255;
  out[o++] = (version >>> 8) & 255;
  out[o] = version & 255;
  return out;
}

export async function hmacSign(key: Bytes, msg: Bytes): Promise<Bytes> {
  const k = await subtle().importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await subtle().sign("HMAC", k, msg));
}

export async function checkValue(key: Bytes): Promise<Bytes> {
  return (await hmacSign(key, utf8(CHECK_LABEL))).slice(0, CHECK_SIZE);
}

export async function pbkdf2(secret: Bytes, salt: Bytes, iterations: number): Promise<Bytes> {
  const k = await subtle().importKey("raw", secret, "PBKDF2", false, ["deriveBits"]);
  return new Uint8Array(await subtle().deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations }, k, 256));
}

export async function hkdf(ikm: Bytes, salt: Bytes, info: string): Promise<Bytes> {
  const k = await subtle().importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  return new Uint8Array(await subtle().deriveBits({ name: "HKDF", hash: "SHA-256", salt, info: utf8(info) }, k, 256));
}

// ---- P-256 point check (the decoder's "point" class) -----------------------

const P = 0xffffffff00000001000000000000000000000000ffffffffffffffffffffffffn;
const B = 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn;

/** onP256 reports whether b is an uncompressed point on P-256 (0x04 || X || Y, on the curve). */
export function onP256(b: Uint8Array): boolean {
  if (b.length !== 65 || b[0] !== 4) return false;
  const x = BigInt("0x" + hex(b.subarray(1, 33)));
  const y = BigInt("0x" + hex(b.subarray(33, 65)));
  if (x >= P || y >= P) return false;
  const rhs = (((x * x) % P) * x - 3n * x + B) % P;
  return (y * y) % P === (rhs + P) % P;
}

// ---- decoders ----------------------------------------------------------------

const KINDS: readonly Kind[] = ["escrow", "member", "device", "unlock", "password", "passkey-prf", "chain"];
const PUBLIC_SUITES: readonly Suite[] = ["ecdh-p256", "rsa-oaep-sha1", "rsa-oaep-sha256"];
const SUITES: Readonly<Record<Kind, readonly Suite[]>> = {
  "escrow": PUBLIC_SUITES,
  "member": PUBLIC_SUITES,
  "device": PUBLIC_SUITES,
  "unlock": ["pbkdf2-sha256-aes-kw"],
  "password": ["pbkdf2-sha256-aes-kw"],
  "passkey-prf": ["hkdf-sha256-aes-kw"],
  "chain": ["aes-kw"],
};
export const WITH_ID: readonly Kind[] = ["member", "device", "unlock", "password", "passkey-prf"];

export const isPublicSuite = (suite: string): boolean => (PUBLIC_SUITES as readonly string[]).includes(suite);

function shape(kind: Kind, suite: Suite) {
  const sh = {
    id: WITH_ID.includes(kind),
    credential: kind === "passkey-prf",
    epk: suite === "ecdh-p256",
    kdf: kind === "unlock" || kind === "password" || kind === "passkey-prf",
    unlock: kind === "unlock",
    check: kind === "unlock" || kind === "password" || kind === "passkey-prf",
    rsa: suite === "rsa-oaep-sha1" || suite === "rsa-oaep-sha256",
    saltSize: kind === "passkey-prf" ? PASSKEY_SALT_SIZE : SALT_SIZE,
    minIterations: kind === "unlock" ? MIN_UNLOCK_ITERATIONS : kind === "password" ? MIN_PASSWORD_ITERATIONS : 0,
  };
  const keys = ["v", "kind", "suite", "group", "gdk_version", "key_version"];
  for (const k of ["id", "credential", "epk", "kdf", "unlock", "check"] as const) if (sh[k]) keys.push(k);
  keys.push("commit", "wrapped", "bind");
  return { ...sh, keys };
}

function member(v: sj.Value, key: string): sj.Value | undefined {
  if (v.kind !== "object") return undefined;
  for (const m of v.obj) if (m.key === key) return m.val;
  return undefined;
}

// readVersion: "v" absent is missing-key, not an integer type, not 2 version.
function readVersion(v: sj.Value): void {
  if (!v || v.kind !== "object") fail("type", "not an object");
  const ver = member(v, "v");
  if (ver === undefined) fail("missing-key", "$.v is missing");
  if (ver.kind !== "int") fail("type", "$.v is not an integer");
  if (ver.int !== VERSION) fail("version", "format version " + ver.int + "; this device reads version 2 only");
}

/** checkID refuses an id with a byte outside 0x21-0x7E. */
export function checkID(what: string, s: string): string {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x21 || c > 0x7e) fail("id", what + " has a byte outside 0x21-0x7E at offset " + i);
  }
  return s;
}

const readID = (o: sj.StrictObject, key: string) => checkID("$." + key, o.string(key, 1, MAX_ID));

// slotFrom reads a parsed slot in the order of "Slot", "Decoding order":
// kind and suite present and strings (missing-key, type), then a known
// kind, then a suite allowed for it; the Go decoder's order.
function slotFrom(v: sj.Value): Slot {
  readVersion(v);
  const kv = member(v, "kind");
  const sv = member(v, "suite");
  for (const [key, f] of [["kind", kv], ["suite", sv]] as const) {
    if (f === undefined) fail("missing-key", "$." + key + " is missing");
    if (f.kind !== "string") fail("type", "$." + key + " is not a string");
  }
  const kind = (kv as { str: string }).str as Kind;
  if (!KINDS.includes(kind)) fail("kind", "unknown slot kind");
  const suite = (sv as { str: string }).str as Suite;
  if (!SUITES[kind].includes(suite)) fail("suite", "suite not allowed for a " + kind + " slot");
  const sh = shape(kind, suite);
  const o = sj.object(v, ...sh.keys);
  const group = readID(o, "group");
  const gdk_version = o.uint32("gdk_version", 1, kind === "chain" ? MAX_VERSION - 1 : MAX_VERSION);
  const key_version = o.uint32("key_version", 1, MAX_VERSION);
  if (kind === "chain" && key_version !== gdk_version + 1) {
    fail("mismatch", "a chain slot holding GDK " + gdk_version + " has key_version " + key_version + ", want " + (gdk_version + 1));
  }
  const s: Partial<Slot> = { kind, suite, group, gdk_version, key_version };
  if (sh.id) s.id = readID(o, "id");
  if (sh.credential) s.credential = o.bytes("credential", 1, MAX_CREDENTIAL);
  if (sh.epk) {
    s.epk = o.bytes("epk", 65, 65);
    if (!onP256(s.epk)) fail("point", "epk is not an uncompressed P-256 point");
  }
  if (sh.kdf) {
    const k = sh.minIterations ? o.child("kdf", "salt", "iterations") : o.child("kdf", "salt");
    s.kdf = { salt: k.bytes("salt", sh.saltSize, sh.saltSize) };
    if (sh.minIterations) s.kdf.iterations = k.uint32("iterations", sh.minIterations, MAX_ITERATIONS);
  }
  if (sh.unlock) {
    const u = o.child("unlock", "epoch", "index");
    s.unlock = { epoch: u.uint32("epoch", 1, MAX_VERSION), index: u.uint32("index", 0, MAX_INDEX) };
  }
  if (sh.check) s.check = o.bytes("check", CHECK_SIZE, CHECK_SIZE);
  s.commit = o.bytes("commit", COMMIT_SIZE, COMMIT_SIZE);
  s.wrapped = sh.rsa ? o.bytes("wrapped", 256, 512) : o.bytes("wrapped", KW_SIZE, KW_SIZE);
  s.bind = o.bytes("bind", BIND_SIZE, BIND_SIZE);
  return s as Slot;
}

export type Input = string | Uint8Array | ArrayBuffer;

function bytesOf(input: Input): Uint8Array {
  if (typeof input === "string") return utf8(input);
  if (input instanceof ArrayBuffer) return new Uint8Array(input);
  if (input instanceof Uint8Array) return input;
  fail("syntax", "input is neither text nor bytes");
}

/** parseSlot decodes one slot: size, JSON profile, then the fields in the document's order. */
export function parseSlot(input: Input): Slot {
  const b = bytesOf(input);
  if (b.length > MAX_SLOT_SIZE) fail("size", "slot of " + b.length + " bytes, more than " + MAX_SLOT_SIZE);
  return slotFrom(sj.parse(b));
}

/**
 * parseBundle decodes a bundle; then, in slot order, every slot must name
 * the bundle's group and the slots of one gdk_version carry one commitment
 * ("mismatch").
 */
export function parseBundle(input: Input): Bundle {
  const b = bytesOf(input);
  if (b.length > MAX_BUNDLE_SIZE) fail("size", "bundle of " + b.length + " bytes, more than " + MAX_BUNDLE_SIZE);
  const v = sj.parse(b);
  readVersion(v);
  const o = sj.object(v, "v", "group", "slots");
  const group = readID(o, "group");
  const arr = o.array("slots", 1, MAX_SLOTS);
  const slots: Slot[] = [];
  const commits = new Map<number, Bytes>();
  arr.forEach((e, i) => {
    let s: Slot;
    try {
      s = slotFrom(e);
    } catch (err) {
      if (err instanceof DeviceError) throw new DeviceError(err.code, "slot " + i + ": " + err.detail);
      throw err;
    }
    if (s.group !== group) fail("mismatch", "slot " + i + " names another group than the bundle");
    const c = commits.get(s.gdk_version);
    if (c && !equal(c, s.commit)) fail("mismatch", "slot " + i + ": two commitments for GDK version " + s.gdk_version);
    commits.set(s.gdk_version, s.commit);
    slots.push(s);
  });
  return { group, slots };
}

/** parseRecord decodes an encrypted record (its header and ciphertext; nothing is decrypted). */
export function parseRecord(input: Input): SealedRecord {
  const b = bytesOf(input);
  if (b.length > MAX_RECORD_SIZE) fail("size", "record of " + b.length + " bytes, more than " + MAX_RECORD_SIZE);
  const v = sj.parse(b);
  readVersion(v);
  const o = sj.object(v, "v", "group", "id", "gdk_version", "iv", "ct");
  return {
    group: readID(o, "group"),
    id: readID(o, "id"),
    gdk_version: o.uint32("gdk_version", 1, MAX_VERSION),
    iv: o.bytes("iv", IV_SIZE, IV_SIZE),
    ct: o.bytes("ct", TAG_SIZE, MAX_RECORD_SIZE),
  };
}

// ---- encoders (canonical form, checked by decoding) --------------------------

const jstr = (s: string): sj.Value => ({ kind: "string", str: s });
const jint = (n: number): sj.Value => ({ kind: "int", int: n });
const jbin = (b: Uint8Array): sj.Value => jstr(sj.encodeBase64(b));
const jobj = (pairs: [string, sj.Value][]): sj.Value => ({ kind: "object", obj: pairs.map(([key, val]) => ({ key, val })) });

/** encodeSlot writes a slot in canonical form and decodes the result, so a device writes only what it reads. */
export function encodeSlot(s: Slot): string {
  const m: [string, sj.Value][] = [["v", jint(VERSION)], ["kind", jstr(s.kind)], ["suite", jstr(s.suite)], ["group", jstr(s.group)],
    ["gdk_version", jint(s.gdk_version)], ["key_version", jint(s.key_version)]];
  if (s.id !== undefined) m.push(["id", jstr(s.id)]);
  if (s.credential !== undefined) m.push(["credential", jbin(s.credential)]);
  if (s.epk !== undefined) m.push(["epk", jbin(s.epk)]);
  if (s.kdf !== undefined) {
    const k: [string, sj.Value][] = [["salt", jbin(s.kdf.salt)]];
    if (s.kdf.iterations !== undefined) k.push(["iterations", jint(s.kdf.iterations)]);
    m.push(["kdf", jobj(k)]);
  }
  if (s.unlock !== undefined) m.push(["unlock", jobj([["epoch", jint(s.unlock.epoch)], ["index", jint(s.unlock.index)]])]);
  if (s.check !== undefined) m.push(["check", jbin(s.check)]);
  m.push(["commit", jbin(s.commit)], ["wrapped", jbin(s.wrapped)], ["bind", jbin(s.bind)]);
  const text = sj.encode(jobj(m));
  parseSlot(text);
  return text;
}

/** encodeBundle writes a bundle of slot texts and checks it as parseBundle does. */
export function encodeBundle(group: string, slotTexts: readonly string[]): string {
  const arr = slotTexts.map((t) => sj.parse(t));
  const text = sj.encode(jobj([["v", jint(VERSION)], ["group", jstr(group)], ["slots", { kind: "array", arr }]]));
  parseBundle(text);
  return text;
}

export function encodeRecord(r: SealedRecord): string {
  const text = sj.encode(jobj([["v", jint(VERSION)], ["group", jstr(r.group)], ["id", jstr(r.id)],
    ["gdk_version", jint(r.gdk_version)], ["iv", jbin(r.iv)], ["ct", jbin(r.ct)]]));
  parseRecord(text);
  return text;
}
