// The browser device of escrowd's key bundle, format version 2, written
// from docs/FORMAT.md with WebCrypto (crypto.subtle) and nothing else for
// cryptography. It decodes slots, bundles and records in the strict JSON
// profile (web/strictjson.js) in the document's decoding order, opens every
// slot kind and suite, checks every slot's commitment and binding, keeps
// the GDKs it trusts (Keyring: pinned, chained up, chained down), follows
// a rotation chain and reads and writes records under the record key.
//
// Every failure is a DeviceError whose .cls is the document's error class
// ("Error classes"): the JSON-profile classes are StrictJSONError.cls of
// web/strictjson.js, the typed-code classes CodeError.code of
// web/unlockcode.js, passed through unchanged. classOf(err) gives the
// class of any error this module throws.
//
// A GDK is held as a GDK object: its group, version and commitment, and a
// WebCrypto AES-CBC key (encrypt only) from which every derived key is
// made with DK. Its raw bytes are in JavaScript memory only while the
// commitment is computed, and zeroed right after. The CryptoKey is
// extractable because WebCrypto's wrapKey (sealing a slot, a chain) needs
// it; a device never exports it otherwise.
"use strict";

import * as sj from "./strictjson.js";
import { parseCode, CodeError, MESSAGES as CODE_MESSAGES } from "./unlockcode.js";

const subtle = globalThis.crypto.subtle;
const te = new TextEncoder();

export const VERSION = 2;

// Limits of docs/FORMAT.md ("The strict JSON profile", "Slot", "Encrypted
// records").
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

// ---- errors ----------------------------------------------------------------

export const MESSAGES = {
  "size": "The data is larger than the format allows.",
  "syntax": "The key bundle is not in the format's JSON.",
  "range": "A value of the key bundle is out of range.",
  "duplicate-key": "A field of the key bundle appears twice.",
  "unknown-key": "The key bundle has a field this device does not know.",
  "missing-key": "A field of the key bundle is missing.",
  "type": "A field of the key bundle has the wrong type.",
  "base64": "A byte string of the key bundle is not canonical base64.",
  "version": "The key bundle is not format version 2.",
  "kind": "The slot is of a kind this device does not know.",
  "suite": "The slot's suite is not allowed for its kind.",
  "id": "An id of the key bundle is not printable ASCII.",
  "point": "The slot's ephemeral key is not a P-256 point.",
  "mismatch": "The slots of the key bundle disagree with each other.",
  "binding": "This slot belongs to another group, recipient or kind, or was altered.",
  "commitment": "The key in this slot is not the group key it claims to be.",
  "untrusted": "This slot holds a group key this device does not trust.",
  "wrong-key": "This slot does not open with this device's key.",
  "wrong-secret": "Wrong password or passkey.",
  "wrong-code": "This code is valid, but it does not open this device's data: it belongs to another user or to an older set of codes.",
  "damaged": "The code is right, but this device's copy of the key is damaged or was tampered with. Sync the device and try again.",
  "not-a-code": CODE_MESSAGES["not-a-code"],
  "mistyped": CODE_MESSAGES["mistyped"],
  "record": "The record does not decrypt with this group key.",
};

export const CLASSES = Object.keys(MESSAGES);

// DeviceError carries the error class in .cls (and .code, the same string,
// for the UI). Details give field names, sizes and positions, never a
// secret or a key.
export class DeviceError extends Error {
  constructor(cls, detail, cause) {
    super((MESSAGES[cls] || cls) + (detail ? " (" + detail + ")" : ""));
    this.name = "DeviceError";
    this.cls = cls;
    this.code = cls;
    if (cause) this.cause = cause;
  }
}

function fail(cls, detail) {
  throw new DeviceError(cls, detail);
}

// classOf returns the error class of an error thrown by this module, by
// web/strictjson.js or by web/unlockcode.js, or "".
export function classOf(e) {
  if (e instanceof DeviceError) return e.cls;
  if (e instanceof sj.StrictJSONError) return e.cls;
  if (e instanceof CodeError) return e.code;
  return "";
}

// asDevice turns a strictjson or unlockcode error into a DeviceError of
// the same class; anything else is a bug and is thrown as is.
function asDevice(e) {
  if (e instanceof DeviceError) return e;
  if (e instanceof sj.StrictJSONError) return new DeviceError(e.cls, e.message.replace(/^strictjson: [a-z-]+: /, ""), e);
  if (e instanceof CodeError) {
    const d = new DeviceError(e.code, "", e);
    d.message = e.message; // the code's message, with positions and counts only
    return d;
  }
  return e;
}

function guard(fn) {
  try {
    return fn();
  } catch (e) {
    throw asDevice(e);
  }
}

// ---- bytes -------------------------------------------------------------------

export function hex(u8) {
  return Array.from(new Uint8Array(u8), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function unhex(s) {
  if (typeof s !== "string" || s.length % 2 !== 0 || /[^0-9a-f]/i.test(s)) throw new TypeError("not hex");
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16);
  return out;
}

export const b64 = sj.decodeBase64;
export const toB64 = sj.encodeBase64;

function concat(...parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const u8 = (n) => new Uint8Array([n]);
const u16 = (n) => new Uint8Array([(n >>> 8) & 255, n & 255]);
const u32 = (n) => new Uint8Array([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
const str = (s) => te.encode(s || "");
function lp8(b) {
  if (b.length > 255) throw new RangeError("field longer than 255 bytes");
  return concat(u8(b.length), b);
}
function lp16(b) {
  if (b.length > 65535) throw new RangeError("field longer than 65535 bytes");
  return concat(u16(b.length), b);
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

function bytesOf(input) {
  if (typeof input === "string") return te.encode(input);
  if (input instanceof ArrayBuffer) return new Uint8Array(input);
  if (input instanceof Uint8Array) return input;
  fail("syntax", "input is neither text nor bytes");
}

function random(n) {
  return globalThis.crypto.getRandomValues(new Uint8Array(n));
}

// ---- labels and the format's functions (docs/FORMAT.md) ------------------------

function label32(s) {
  const l = new Uint8Array(32);
  l.set(te.encode(s));
  return l;
}

export const LABEL_RECORD = label32("escrowd v2 record key");
export const LABEL_CHAIN = label32("escrowd v2 chain key");
export const LABEL_BIND = label32("escrowd v2 bind key");
const COMMIT_LABEL = "escrowd v2 gdk commitment";
const BIND_LABEL = "escrowd v2 slot";
const ECDH_LABEL = "escrowd v2 ecdh-p256";
const CHECK_LABEL = "escrowd v2 key check";
const PASSKEY_LABEL = "escrowd v2 passkey-prf";
const RECORD_LABEL = "escrowd v2 record";

// DK(K, L) = AES-256(K, L[0:16]) || AES-256(K, L[16:32]): with AES-CBC and a
// zero IV the first output block of one block is AES(K, block). key is an
// AES-CBC CryptoKey (usage encrypt) or 32 raw bytes.
export async function dk(key, label) {
  if (label.length !== 32) throw new RangeError("a DK label is 32 bytes");
  let k = key;
  if (!(key instanceof CryptoKey)) {
    if (key.length !== 32) throw new RangeError("DK takes an AES-256 key");
    k = await subtle.importKey("raw", key, "AES-CBC", false, ["encrypt"]);
  }
  const iv = new Uint8Array(16);
  const a = new Uint8Array(await subtle.encrypt({ name: "AES-CBC", iv }, k, label.subarray(0, 16)));
  const b = new Uint8Array(await subtle.encrypt({ name: "AES-CBC", iv }, k, label.subarray(16, 32)));
  return concat(a.subarray(0, 16), b.subarray(0, 16));
}

export function commitmentPrefix(group, version) {
  return concat(str(COMMIT_LABEL), u8(0), lp16(str(group)), u32(version));
}

// commitment(group, v, GDK) = SHA-256(prefix || GDK), GDK as raw bytes.
export async function commitment(group, version, raw) {
  return new Uint8Array(await subtle.digest("SHA-256", concat(commitmentPrefix(group, version), raw)));
}

// bindMessage is M of "The binding": every field of the slot but bind.
export function bindMessage(s) {
  return concat(
    str(BIND_LABEL), u8(0),
    lp8(str(s.kind)), lp8(str(s.suite)), lp16(str(s.group)),
    u32(s.gdk_version), u32(s.key_version),
    lp16(str(s.id)), lp16(s.credential || new Uint8Array(0)), lp8(s.epk || new Uint8Array(0)),
    lp8(s.kdf ? s.kdf.salt : new Uint8Array(0)), u32(s.kdf && s.kdf.iterations ? s.kdf.iterations : 0),
    u32(s.unlock ? s.unlock.epoch : 0), u32(s.unlock ? s.unlock.index : 0),
    lp8(s.check || new Uint8Array(0)), lp8(s.commit), lp16(s.wrapped));
}

export async function ecdhInfo(epk, rpk) {
  return new Uint8Array(await subtle.digest("SHA-256", concat(str(ECDH_LABEL), u8(0), epk, rpk)));
}

export function prfInput(salt) {
  return concat(str(PASSKEY_LABEL), u8(0), salt);
}

export function recordAAD(group, id, version) {
  return concat(str(RECORD_LABEL), u8(0), lp16(str(group)), lp16(str(id)), u32(version));
}

async function hmacSign(keyBytes, msg) {
  const k = await subtle.importKey("raw", keyBytes, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await subtle.sign("HMAC", k, msg));
}

export async function checkValue(key) {
  return (await hmacSign(key, str(CHECK_LABEL))).slice(0, CHECK_SIZE);
}

async function pbkdf2(secret, salt, iterations) {
  const k = await subtle.importKey("raw", secret, "PBKDF2", false, ["deriveBits"]);
  return new Uint8Array(await subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations }, k, 256));
}

async function hkdf(ikm, salt, info) {
  const k = await subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  return new Uint8Array(await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info: str(info) }, k, 256));
}

// ---- P-256 point check (the decoder's "point" class) ----------------------------

const P = 0xffffffff00000001000000000000000000000000ffffffffffffffffffffffffn;
const B = 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn;

function bigOf(b) {
  return BigInt("0x" + hex(b));
}

// onP256 reports whether b is an uncompressed point on P-256:
// 0x04 || X || Y with X, Y < p and Y² = X³ − 3X + b (mod p). The point at
// infinity has no such encoding.
export function onP256(b) {
  if (b.length !== 65 || b[0] !== 4) return false;
  const x = bigOf(b.subarray(1, 33));
  const y = bigOf(b.subarray(33, 65));
  if (x >= P || y >= P) return false;
  const rhs = (((x * x) % P) * x - 3n * x + B) % P;
  return (y * y) % P === (rhs + P) % P;
}

// ---- decoders ---------------------------------------------------------------

const KINDS = ["escrow", "member", "device", "unlock", "password", "passkey-prf", "chain"];
const PUBLIC_SUITES = ["ecdh-p256", "rsa-oaep-sha1", "rsa-oaep-sha256"];
const SUITES = {
  "escrow": PUBLIC_SUITES,
  "member": PUBLIC_SUITES,
  "device": PUBLIC_SUITES,
  "unlock": ["pbkdf2-sha256-aes-kw"],
  "password": ["pbkdf2-sha256-aes-kw"],
  "passkey-prf": ["hkdf-sha256-aes-kw"],
  "chain": ["aes-kw"],
};
const WITH_ID = ["member", "device", "unlock", "password", "passkey-prf"];

export function isPublicSuite(suite) {
  return PUBLIC_SUITES.includes(suite);
}

// shape is what a (kind, suite) pair allows, in the table's order.
function shape(kind, suite) {
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
  for (const k of ["id", "credential", "epk", "kdf", "unlock", "check"]) if (sh[k]) keys.push(k);
  keys.push("commit", "wrapped", "bind");
  sh.keys = keys;
  return sh;
}

function member(v, key) {
  for (const m of v.obj) if (m.key === key) return m.val;
  return undefined;
}

// readVersion: "v" absent is missing-key, not an integer type, not 2 version.
function readVersion(v) {
  if (!v || v.kind !== "object") fail("type", "not an object");
  const ver = member(v, "v");
  if (ver === undefined) fail("missing-key", "$.v is missing");
  if (ver.kind !== "int") fail("type", "$.v is not an integer");
  if (ver.int !== VERSION) fail("version", "format version " + ver.int + "; this device reads version 2 only");
}

function checkID(what, s) {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x21 || c > 0x7e) fail("id", what + " has a byte outside 0x21-0x7E at offset " + i);
  }
  return s;
}

function readID(o, key) {
  return checkID("$." + key, o.string(key, 1, MAX_ID));
}

// slotFrom reads a parsed slot in the order of "Slot", "Decoding order".
function slotFrom(v) {
  readVersion(v);
  // kind and suite: present and strings (missing-key, type) both, then
  // a known kind (kind), then a suite allowed for it (suite). This is the
  // Go decoder's order (escrow/bundle), which its tests pin; FORMAT.md's
  // "Decoding order" says "kind"/"suite" for an absent or non-string one.
  const kv = member(v, "kind");
  const sv = member(v, "suite");
  for (const [key, f] of [["kind", kv], ["suite", sv]]) {
    if (f === undefined) fail("missing-key", "$." + key + " is missing");
    if (f.kind !== "string") fail("type", "$." + key + " is not a string");
  }
  if (!KINDS.includes(kv.str)) fail("kind", "unknown slot kind");
  const kind = kv.str;
  if (!SUITES[kind].includes(sv.str)) fail("suite", "suite not allowed for a " + kind + " slot");
  const suite = sv.str;
  const sh = shape(kind, suite);
  const o = sj.object(v, ...sh.keys);
  const s = { kind, suite };
  s.group = readID(o, "group");
  s.gdk_version = o.uint32("gdk_version", 1, kind === "chain" ? MAX_VERSION - 1 : MAX_VERSION);
  s.key_version = o.uint32("key_version", 1, MAX_VERSION);
  if (kind === "chain" && s.key_version !== s.gdk_version + 1) {
    fail("mismatch", "a chain slot holding GDK " + s.gdk_version + " has key_version " + s.key_version + ", want " + (s.gdk_version + 1));
  }
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
  return s;
}

// parseSlot decodes one slot (text or bytes): size, JSON profile, then the
// fields in the document's order. The first failure is the answer.
export function parseSlot(input) {
  return guard(() => {
    const b = bytesOf(input);
    if (b.length > MAX_SLOT_SIZE) fail("size", "slot of " + b.length + " bytes, more than " + MAX_SLOT_SIZE);
    return slotFrom(sj.parse(b));
  });
}

// parseBundle decodes a bundle; then, in slot order, every slot must name
// the bundle's group and the slots of one gdk_version carry one commit
// ("mismatch").
export function parseBundle(input) {
  return guard(() => {
    const b = bytesOf(input);
    if (b.length > MAX_BUNDLE_SIZE) fail("size", "bundle of " + b.length + " bytes, more than " + MAX_BUNDLE_SIZE);
    const v = sj.parse(b);
    readVersion(v);
    const o = sj.object(v, "v", "group", "slots");
    const group = readID(o, "group");
    const arr = o.array("slots", 1, MAX_SLOTS);
    const slots = [];
    const commits = new Map();
    arr.forEach((e, i) => {
      let s;
      try {
        s = slotFrom(e);
      } catch (err) {
        const d = asDevice(err);
        if (d instanceof DeviceError) d.message = "slot " + i + ": " + d.message;
        throw d;
      }
      if (s.group !== group) fail("mismatch", "slot " + i + " names another group than the bundle");
      const c = commits.get(s.gdk_version);
      if (c && !equal(c, s.commit)) fail("mismatch", "slot " + i + ": two commitments for GDK version " + s.gdk_version);
      commits.set(s.gdk_version, s.commit);
      slots.push(s);
    });
    return { group, slots };
  });
}

// parseRecord decodes an encrypted record.
export function parseRecord(input) {
  return guard(() => {
    const b = bytesOf(input);
    if (b.length > MAX_RECORD_SIZE) fail("size", "record of " + b.length + " bytes, more than " + MAX_RECORD_SIZE);
    const v = sj.parse(b);
    readVersion(v);
    const o = sj.object(v, "v", "group", "id", "gdk_version", "iv", "ct");
    const r = {};
    r.group = readID(o, "group");
    r.id = readID(o, "id");
    r.gdk_version = o.uint32("gdk_version", 1, MAX_VERSION);
    r.iv = o.bytes("iv", IV_SIZE, IV_SIZE);
    r.ct = o.bytes("ct", TAG_SIZE, MAX_RECORD_SIZE);
    return r;
  });
}

// ---- encoders (canonical form, checked by decoding) ------------------------------

const jstr = (s) => ({ kind: "string", str: s });
const jint = (n) => ({ kind: "int", int: n });
const jbin = (b) => jstr(sj.encodeBase64(b));
const jobj = (pairs) => ({ kind: "object", obj: pairs.map(([key, val]) => ({ key, val })) });

// encodeSlot writes a slot object (as parseSlot returns it) in canonical
// form and decodes the result, so a device writes only what it reads.
export function encodeSlot(s) {
  return guard(() => {
    const m = [["v", jint(VERSION)], ["kind", jstr(s.kind)], ["suite", jstr(s.suite)], ["group", jstr(s.group)],
      ["gdk_version", jint(s.gdk_version)], ["key_version", jint(s.key_version)]];
    if (s.id !== undefined) m.push(["id", jstr(s.id)]);
    if (s.credential !== undefined) m.push(["credential", jbin(s.credential)]);
    if (s.epk !== undefined) m.push(["epk", jbin(s.epk)]);
    if (s.kdf !== undefined) {
      const k = [["salt", jbin(s.kdf.salt)]];
      if (s.kdf.iterations !== undefined) k.push(["iterations", jint(s.kdf.iterations)]);
      m.push(["kdf", jobj(k)]);
    }
    if (s.unlock !== undefined) m.push(["unlock", jobj([["epoch", jint(s.unlock.epoch)], ["index", jint(s.unlock.index)]])]);
    if (s.check !== undefined) m.push(["check", jbin(s.check)]);
    m.push(["commit", jbin(s.commit)], ["wrapped", jbin(s.wrapped)], ["bind", jbin(s.bind)]);
    const text = sj.encode(jobj(m));
    parseSlot(text);
    return text;
  });
}

export function encodeBundle(group, slotTexts) {
  const arr = slotTexts.map((t) => sj.parse(t));
  const text = guard(() => sj.encode(jobj([["v", jint(VERSION)], ["group", jstr(group)], ["slots", { kind: "array", arr }]])));
  parseBundle(text);
  return text;
}

function encodeRecord(r) {
  const text = guard(() => sj.encode(jobj([["v", jint(VERSION)], ["group", jstr(r.group)], ["id", jstr(r.id)],
    ["gdk_version", jint(r.gdk_version)], ["iv", jbin(r.iv)], ["ct", jbin(r.ct)]])));
  parseRecord(text);
  return text;
}

// ---- GDKs -------------------------------------------------------------------------

// GDK is one group data key of one version of one group. key is an AES-CBC
// CryptoKey (usage encrypt), the input of DK; commit its commitment.
export class GDK {
  constructor(group, version, commit, key) {
    this.group = group;
    this.version = version;
    this.commit = commit;
    this.key = key;
    Object.freeze(this);
  }

  derive(label) {
    return dk(this.key, label);
  }
}

// gdkFromRaw makes a GDK object of raw bytes, which it zeroes.
async function gdkFromRaw(group, version, raw) {
  try {
    const commit = await commitment(group, version, raw);
    const key = await subtle.importKey("raw", raw, "AES-CBC", true, ["encrypt"]);
    return new GDK(group, version, commit, key);
  } finally {
    raw.fill(0);
  }
}

// newGDK makes a random GDK of version of group (the group's creator, or a
// test).
export async function newGDK(group, version) {
  return gdkFromRaw(group, version, random(GDK_SIZE));
}

// importGDK takes raw GDK bytes (from the vectors; a device never gets a
// GDK in clear). The bytes are copied, not zeroed.
export async function importGDK(group, version, raw) {
  return gdkFromRaw(group, version, new Uint8Array(raw));
}

// exportGDK returns a GDK's raw bytes: for the vectors only.
export async function exportGDK(gdk) {
  return new Uint8Array(await subtle.exportKey("raw", gdk.key));
}

// verify is steps 4 and 5 of "Opening a slot" on the raw bytes a slot
// gave: the commitment, then the binding. It returns the GDK object and
// zeroes raw.
async function verify(s, raw, trace) {
  try {
    if (raw.length !== GDK_SIZE) fail("commitment", "the slot holds " + raw.length + " bytes, not a 32-byte GDK");
    const c = await commitment(s.group, s.gdk_version, raw);
    if (!equal(c, s.commit)) fail("commitment", "the commitment does not name the key in the slot");
    const gdk = await gdkFromRaw(s.group, s.gdk_version, raw);
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

// ---- opening slots ("Opening a slot") ------------------------------------------------

// parseAny takes a slot as text or bytes, or as an object parseSlot
// returned (encoded and decoded again, so no unchecked object is opened).
function parseAny(input) {
  if (input && typeof input === "object" && !(input instanceof Uint8Array) && !(input instanceof ArrayBuffer)) {
    return parseSlot(encodeSlot(input));
  }
  return parseSlot(input);
}

// checkWant is step 2: the slot names the group being opened and, for the
// kinds with an id, this device's recipient id or user.
function checkWant(s, want) {
  if (!want || typeof want.group !== "string") throw new TypeError("want.group is required");
  if (s.group !== want.group) fail("binding", "the slot belongs to another group");
  if ((s.id || "") !== (want.id || "")) fail("binding", "the slot belongs to another recipient");
}

function checkKind(s, kinds) {
  if (!kinds.includes(s.kind)) fail("binding", "a " + s.kind + " slot, not a " + kinds.join(" or ") + " slot");
}

async function unwrapRaw(kekBytes, wrapped) {
  const kek = await subtle.importKey("raw", kekBytes, "AES-KW", false, ["unwrapKey"]);
  const k = await subtle.unwrapKey("raw", wrapped, kek, "AES-KW", "AES-CBC", true, ["encrypt"]);
  return new Uint8Array(await subtle.exportKey("raw", k));
}

function b64url(s) {
  const t = s.replace(/-/g, "+").replace(/_/g, "/");
  return sj.decodeBase64(t + "===".slice((t.length + 3) % 4));
}

// p256Public returns the uncompressed public key of a PKCS#8 P-256 key.
async function p256Public(pkcs8) {
  const k = await subtle.importKey("pkcs8", pkcs8, { name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
  const jwk = await subtle.exportKey("jwk", k);
  return concat(u8(4), b64url(jwk.x), b64url(jwk.y));
}

// openPublic opens an escrow, member or device slot with a PKCS#8 private
// key (RSA for the rsa-oaep suites, P-256 for ecdh-p256). want is
// {group, id} (no id for an escrow slot). Returns {slot, gdk}.
export async function openPublic(input, want, pkcs8, trace) {
  const s = parseAny(input);
  if (!isPublicSuite(s.suite)) fail("wrong-key", "a " + s.kind + " slot is not opened with a private key");
  checkWant(s, want);
  let raw;
  if (s.suite === "ecdh-p256") {
    let priv, rpk;
    try {
      rpk = await p256Public(pkcs8);
      priv = await subtle.importKey("pkcs8", pkcs8, { name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]);
    } catch (e) {
      fail("wrong-key", "the private key is not a P-256 key");
    }
    let peer;
    try {
      peer = await subtle.importKey("raw", s.epk, { name: "ECDH", namedCurve: "P-256" }, false, []);
    } catch (e) {
      fail("point", "epk is not a P-256 point");
    }
    const z = new Uint8Array(await subtle.deriveBits({ name: "ECDH", public: peer }, priv, 256));
    const info = await ecdhInfo(s.epk, rpk);
    const k = await dk(z, info);
    if (trace) Object.assign(trace, { z: hex(z), info: hex(info), key: hex(k) });
    z.fill(0);
    try {
      raw = await unwrapRaw(k, s.wrapped);
    } catch (e) {
      fail("wrong-key", "the " + s.kind + " slot does not open with this key");
    } finally {
      k.fill(0);
    }
  } else {
    const hash = s.suite === "rsa-oaep-sha1" ? "SHA-1" : "SHA-256";
    let priv;
    try {
      priv = await subtle.importKey("pkcs8", pkcs8, { name: "RSA-OAEP", hash }, false, ["decrypt"]);
    } catch (e) {
      fail("wrong-key", "the private key is not an RSA key");
    }
    try {
      raw = new Uint8Array(await subtle.decrypt({ name: "RSA-OAEP" }, priv, s.wrapped));
    } catch (e) {
      fail("wrong-key", "the " + s.kind + " slot does not open with this key");
    }
  }
  return { slot: s, gdk: await verify(s, raw, trace) };
}

// openSecret: the check value, then AES-KW, then steps 4 and 5.
async function openSecret(s, key, wrong, trace) {
  try {
    const check = await checkValue(key);
    if (trace) Object.assign(trace, { key: hex(key), check: hex(check) });
    if (!equal(check, s.check)) fail(wrong);
    let raw;
    try {
      raw = await unwrapRaw(key, s.wrapped);
    } catch (e) {
      fail("damaged", "the wrapped key fails its integrity check");
    }
    return { slot: s, gdk: await verify(s, raw, trace) };
  } finally {
    key.fill(0);
  }
}

// openUnlock opens, among a user's unlock slots, the one the typed code
// names: its index symbol, newest epoch first, so a code costs one PBKDF2.
// want is {group, id: user}. Errors: not-a-code, mistyped (the typing),
// wrong-code (no such slot, or another check value), damaged, and the
// classes of decoding and of steps 2, 4 and 5.
export async function openUnlock(inputs, want, typed, trace) {
  const code = guard(() => parseCode(typed));
  try {
    let pick = null;
    for (const input of inputs) {
      const s = parseAny(input);
      checkKind(s, ["unlock"]);
      checkWant(s, want);
      if (s.unlock.index === code.index && (pick === null || s.unlock.epoch > pick.unlock.epoch)) pick = s;
    }
    if (pick === null) fail("wrong-code", "no unlock slot of this index");
    if (trace) trace.secret = hex(code.secret);
    const key = await pbkdf2(code.secret, pick.kdf.salt, pick.kdf.iterations);
    return await openSecret(pick, key, "wrong-code", trace);
  } finally {
    code.secret.fill(0);
  }
}

// openPassword opens a password slot with the password as typed (NFC).
export async function openPassword(input, want, password, trace) {
  const s = parseAny(input);
  checkKind(s, ["password"]);
  checkWant(s, want);
  const secret = te.encode(password.normalize("NFC"));
  if (trace) trace.secret = hex(secret);
  try {
    return await openSecret(s, await pbkdf2(secret, s.kdf.salt, s.kdf.iterations), "wrong-secret", trace);
  } finally {
    secret.fill(0);
  }
}

// openPasskey opens a passkey-prf slot. prf(input, slot) returns the
// WebAuthn PRF output (32 bytes) of the slot's credential for input
// (navigator.credentials.get with the prf extension, eval.first = input).
export async function openPasskey(input, want, prf, trace) {
  const s = parseAny(input);
  checkKind(s, ["passkey-prf"]);
  checkWant(s, want);
  const pin = prfInput(s.kdf.salt);
  if (trace) trace.prf_input = hex(pin);
  const out = new Uint8Array(await prf(pin, s));
  if (out.length !== 32) fail("wrong-secret", "the PRF output is " + out.length + " bytes, not 32");
  try {
    return await openSecret(s, await hkdf(out, s.kdf.salt, PASSKEY_LABEL), "wrong-secret", trace);
  } finally {
    out.fill(0);
  }
}

// openChain returns the GDK a chain slot holds (version gdk_version), given
// the GDK of version gdk_version + 1 (key_version). Returns {slot, gdk}.
// "wrong-key" if it does not unwrap under that GDK's chain key.
export async function openChain(input, group, newer, trace) {
  const s = parseAny(input);
  checkKind(s, ["chain"]);
  checkWant(s, { group });
  // The GDK given is used whatever its version: a chain slot whose
  // versions were rewritten then fails its commitment (step 4), as the
  // vectors pin, not an earlier version check.
  if (!(newer instanceof GDK)) throw new TypeError("openChain takes the newer GDK");
  const kc = await newer.derive(LABEL_CHAIN);
  if (trace) trace.key = hex(kc);
  let raw;
  try {
    raw = await unwrapRaw(kc, s.wrapped);
  } catch (e) {
    fail("wrong-key", "the chain slot of GDK " + s.gdk_version + " does not open with this GDK");
  } finally {
    kc.fill(0);
  }
  return { slot: s, gdk: await verify(s, raw, trace) };
}

// ---- sealing ---------------------------------------------------------------------

// seal fills the commitment and the binding of slot s for gdk and encodes it.
async function seal(s, gdk) {
  if (s.group !== gdk.group || s.gdk_version !== gdk.version) throw new Error("the slot names another GDK than the one sealed");
  s.commit = gdk.commit;
  const kb = await gdk.derive(LABEL_BIND);
  s.bind = await hmacSign(kb, bindMessage(s));
  kb.fill(0);
  return encodeSlot(s);
}

function base(kind, suite, gdk, to) {
  const s = { kind, suite, group: gdk.group, gdk_version: gdk.version, key_version: to.key_version };
  if (WITH_ID.includes(kind)) s.id = to.id;
  return s;
}

async function wrapKW(kekBytes, gdk) {
  const kek = await subtle.importKey("raw", kekBytes, "AES-KW", false, ["wrapKey"]);
  return new Uint8Array(await subtle.wrapKey("raw", gdk.key, kek, "AES-KW"));
}

// sealPublic wraps gdk to a public key (SPKI DER): kind escrow, member or
// device; to = {key_version, id}.
export async function sealPublic(kind, to, suite, spki, gdk) {
  const s = base(kind, suite, gdk, to);
  if (suite === "ecdh-p256") {
    const pub = await subtle.importKey("spki", spki, { name: "ECDH", namedCurve: "P-256" }, true, []);
    const rpk = new Uint8Array(await subtle.exportKey("raw", pub));
    const eph = await subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]);
    s.epk = new Uint8Array(await subtle.exportKey("raw", eph.publicKey));
    const z = new Uint8Array(await subtle.deriveBits({ name: "ECDH", public: pub }, eph.privateKey, 256));
    const k = await dk(z, await ecdhInfo(s.epk, rpk));
    z.fill(0);
    s.wrapped = await wrapKW(k, gdk);
    k.fill(0);
  } else if (suite === "rsa-oaep-sha1" || suite === "rsa-oaep-sha256") {
    const hash = suite === "rsa-oaep-sha1" ? "SHA-1" : "SHA-256";
    const pub = await subtle.importKey("spki", spki, { name: "RSA-OAEP", hash }, false, ["wrapKey"]);
    s.wrapped = new Uint8Array(await subtle.wrapKey("raw", gdk.key, pub, { name: "RSA-OAEP" }));
  } else {
    fail("suite", "not a public-key suite");
  }
  return seal(s, gdk);
}

async function sealWithKey(s, gdk, key) {
  try {
    s.check = await checkValue(key);
    s.wrapped = await wrapKW(key, gdk);
  } finally {
    key.fill(0);
  }
  return seal(s, gdk);
}

// sealPassword wraps gdk under PBKDF2 of the password (NFC); to = {key_version, id: user}.
export async function sealPassword(gdk, to, password, iterations = MIN_PASSWORD_ITERATIONS) {
  const s = base("password", "pbkdf2-sha256-aes-kw", gdk, to);
  s.kdf = { salt: random(SALT_SIZE), iterations };
  const secret = te.encode(password.normalize("NFC"));
  const key = await pbkdf2(secret, s.kdf.salt, iterations);
  secret.fill(0);
  return sealWithKey(s, gdk, key);
}

// sealPasskey wraps gdk under HKDF of the PRF output of credential for a
// fresh salt's PRF input; prf(input, slot) as in openPasskey.
export async function sealPasskey(gdk, to, credential, prf) {
  const s = base("passkey-prf", "hkdf-sha256-aes-kw", gdk, to);
  s.credential = new Uint8Array(credential);
  s.kdf = { salt: random(PASSKEY_SALT_SIZE) };
  const out = new Uint8Array(await prf(prfInput(s.kdf.salt), s));
  if (out.length !== 32) throw new Error("the PRF output is " + out.length + " bytes, not 32");
  const key = await hkdf(out, s.kdf.salt, PASSKEY_LABEL);
  out.fill(0);
  return sealWithKey(s, gdk, key);
}

// sealChain wraps GDK v (older) under the chain key of GDK v + 1 (newer).
export async function sealChain(older, newer) {
  if (older.group !== newer.group || newer.version !== older.version + 1) throw new Error("a chain links GDK v to v + 1 of one group");
  const s = { kind: "chain", suite: "aes-kw", group: older.group, gdk_version: older.version, key_version: newer.version };
  const kc = await newer.derive(LABEL_CHAIN);
  s.wrapped = await wrapKW(kc, older);
  kc.fill(0);
  return seal(s, older);
}

// ---- records ---------------------------------------------------------------------

async function recordKey(gdk, usage) {
  const rk = await gdk.derive(LABEL_RECORD);
  try {
    return await subtle.importKey("raw", rk, "AES-GCM", false, [usage]);
  } finally {
    rk.fill(0);
  }
}

// openRecord decrypts a record with the GDK of its gdk_version and returns
// {group, id, gdk_version, plaintext (bytes)}. "record" if it does not
// decrypt.
export async function openRecord(input, gdk) {
  const r = parseRecord(input);
  if (!(gdk instanceof GDK)) throw new TypeError("openRecord takes a GDK");
  const key = await recordKey(gdk, "decrypt");
  let pt;
  try {
    pt = await subtle.decrypt({ name: "AES-GCM", iv: r.iv, additionalData: recordAAD(r.group, r.id, r.gdk_version), tagLength: 128 }, key, r.ct);
  } catch (e) {
    fail("record", "the record does not decrypt with GDK version " + gdk.version);
  }
  return { group: r.group, id: r.id, gdk_version: r.gdk_version, plaintext: new Uint8Array(pt) };
}

// sealRecord encrypts plaintext (text or bytes) as record id of gdk's
// group and version, under its record key with a fresh 12-byte IV.
export async function sealRecord(gdk, id, plaintext) {
  const pt = typeof plaintext === "string" ? te.encode(plaintext) : plaintext;
  const r = { group: gdk.group, id: checkIDText(id), gdk_version: gdk.version, iv: random(IV_SIZE) };
  const key = await recordKey(gdk, "encrypt");
  r.ct = new Uint8Array(await subtle.encrypt({ name: "AES-GCM", iv: r.iv, additionalData: recordAAD(r.group, r.id, r.gdk_version), tagLength: 128 }, key, pt));
  return encodeRecord(r);
}

function checkIDText(id) {
  if (typeof id !== "string" || id.length < 1 || id.length > MAX_ID) fail("range", "an id is 1 to 128 bytes");
  return guard(() => checkID("id", id));
}

// ---- which GDK a device trusts ------------------------------------------------------

// Keyring holds the GDKs of one group a device trusts, and the commitments
// it pinned. A GDK of version v is adopted only if its commitment is
// pinned (pin: the device made it, or got the commitment over its
// enrolment channel), or chained up (the chain slot of v − 1, opened
// under GDK v, gives the GDK v − 1 held here), or chained down (the chain
// slot of v, opened under the held GDK v + 1, gives it). Once a version
// is pinned, another commitment for it is "untrusted".
export class Keyring {
  constructor(group) {
    this.group = group;
    this.gdks = new Map();
    this.commits = new Map();
  }

  pin(version, commit) {
    const c = this.commits.get(version);
    if (c && !equal(c, commit)) fail("untrusted", "GDK version " + version + " has another commitment pinned");
    this.commits.set(version, new Uint8Array(commit));
  }

  pinned(version) {
    return this.commits.get(version);
  }

  gdk(version) {
    return this.gdks.get(version);
  }

  versions() {
    return [...this.gdks.keys()].sort((a, b) => a - b);
  }

  newest() {
    const v = this.versions();
    return v.length ? this.gdks.get(v[v.length - 1]) : undefined;
  }

  // add offers a GDK opened (and verified) from slot s: kept if its
  // version's pinned commitment is its own; else "untrusted" (prove it
  // with adoptNewer).
  add(s, gdk) {
    if (s.group !== this.group || gdk.group !== this.group) fail("binding", "a slot of another group");
    if (gdk.version !== s.gdk_version) fail("commitment", "the GDK is not of the slot's version");
    const c = this.commits.get(s.gdk_version);
    if (!c) fail("untrusted", "GDK version " + s.gdk_version + " is neither pinned nor chained to a held GDK");
    if (!equal(c, gdk.commit)) fail("untrusted", "GDK version " + s.gdk_version + " is not the one this device trusts");
    this.gdks.set(s.gdk_version, gdk);
    return gdk;
  }

  // adoptNewer adopts gdk, opened from slot s of version v, through the
  // chain slot of version v − 1: opened under gdk it must give exactly the
  // GDK v − 1 held here (same commitment of the same group and version,
  // so the same key).
  async adoptNewer(s, gdk, chain) {
    const prev = this.gdks.get(s.gdk_version - 1);
    if (!prev) fail("untrusted", "no held GDK of version " + (s.gdk_version - 1) + " to chain GDK " + s.gdk_version + " to");
    const { slot: cs, gdk: old } = await openChain(chain, this.group, gdk);
    if (cs.gdk_version !== s.gdk_version - 1 || !equal(old.commit, prev.commit)) {
      fail("untrusted", "the chain of GDK " + s.gdk_version + " does not lead to the GDK " + (s.gdk_version - 1) + " this device holds");
    }
    this.pin(s.gdk_version, gdk.commit);
    return this.add(s, gdk);
  }

  // adoptOlder opens a chain slot with the held GDK of version v + 1 and
  // keeps the GDK v it gives.
  async adoptOlder(chain) {
    const s = parseAny(chain);
    checkKind(s, ["chain"]);
    const next = this.gdks.get(s.gdk_version + 1);
    if (!next) fail("untrusted", "no held GDK of version " + (s.gdk_version + 1) + " to open the chain with");
    const { slot: cs, gdk: old } = await openChain(s, this.group, next);
    this.pin(cs.gdk_version, old.commit);
    this.gdks.set(cs.gdk_version, old);
    return old;
  }

  // openRecord opens a record with the held GDK of its version.
  async openRecord(input) {
    const r = parseRecord(input);
    const gdk = this.gdks.get(r.gdk_version);
    if (!gdk || r.group !== this.group) fail("record", "no held GDK of version " + r.gdk_version + " of this group");
    return openRecord(input, gdk);
  }
}

// ---- vectors ------------------------------------------------------------------------

function errText(e) {
  const c = classOf(e);
  return c ? "error " + c + ": " + e.message : "exception: " + (e && e.message ? e.message : String(e));
}

// The vector file's members ("The vector file"): any other is an error.
// "comment" is in the file but not in the document's list.
const VEC_TOP = ["comment", "format", "group", "keys", "gdks", "commits", "derived", "positive", "negative", "records"];
const VEC_POSITIVE = ["name", "slot", "open", "want", "intermediate", "gdk_version", "gdk"];
const VEC_NEGATIVE = ["name", "op", "input", "input_hex", "open", "want", "class"];
const VEC_RECORD = ["name", "record", "gdk_version", "aad", "key", "plaintext"];
const VEC_OPEN = [["key"], ["code"], ["password"], ["prf", "prf_input"], ["chain_with"]];
const VEC_KEYS = ["rsa2048", "rsa3072", "p256"];
const VEC_DERIVED = ["record", "chain", "bind"];

// The intermediate values that apply to a slot's suite.
function intermediatesOf(s) {
  switch (s.suite) {
    case "ecdh-p256":
      return ["z", "info", "key", "message", "bind"];
    case "rsa-oaep-sha1":
    case "rsa-oaep-sha256":
      return ["message", "bind"];
    case "pbkdf2-sha256-aes-kw":
      return ["secret", "key", "check", "message", "bind"];
    case "hkdf-sha256-aes-kw":
      return ["key", "check", "message", "bind"];
    case "aes-kw":
      return ["key", "message", "bind"];
  }
  return [];
}

// vecMembers throws unless o is an object whose members are all in allowed.
function vecMembers(what, o, allowed) {
  if (!o || typeof o !== "object" || Array.isArray(o)) throw new Error(what + " is not an object");
  const extra = Object.keys(o).filter((k) => !allowed.includes(k));
  if (extra.length) throw new Error(what + " has members the file format does not list: " + extra.join(", "));
}

function vecOpen(op) {
  vecMembers("open", op, VEC_OPEN.flat());
  const keys = Object.keys(op).sort().join(",");
  if (!VEC_OPEN.some((set) => set.slice().sort().join(",") === keys)) throw new Error("open has " + keys + ", want exactly one way to open");
}

function vecInput(v) {
  if ((v.input === undefined) === (v.input_hex === undefined)) throw new Error("want exactly one of input and input_hex");
  return v.input !== undefined ? v.input : unhex(v.input_hex);
}

// runVectors runs escrow/device/testdata/vectors.json (format 2, parsed
// with JSON.parse: the vector file is ordinary JSON): every GDK's
// commitment and derived keys; every positive vector decoded, its
// intermediate values recomputed, opened to its GDK and trusted by a
// keyring that pinned the file's commitments; every negative vector
// refused with exactly its class; every record opened (AAD, key,
// plaintext) and sealed again. Returns {passed, failures: [{name, want,
// got}], counts}.
export async function runVectors(vectors) {
  let passed = 0;
  const failures = [];
  const counts = { gdks: 0, positive: 0, negative: 0, records: 0 };
  const names = new Set();
  const record = (name, want, got) => {
    if (names.has(name)) {
      failures.push({ name, want: "a unique name", got: "a duplicate vector name" });
      return;
    }
    names.add(name);
    if (got === null) passed++;
    else failures.push({ name, want, got });
  };
  if (vectors.format !== 2) {
    failures.push({ name: "format", want: 2, got: vectors.format });
    return { passed, failures, counts };
  }
  try {
    vecMembers("the vector file", vectors, VEC_TOP);
    vecMembers("keys", vectors.keys, VEC_KEYS);
    for (const d of Object.values(vectors.derived || {})) vecMembers("derived", d, VEC_DERIVED);
  } catch (e) {
    failures.push({ name: "file", want: "the members of \"The vector file\"", got: e.message });
  }
  const group = vectors.group;
  const keys = {};
  for (const [k, h] of Object.entries(vectors.keys || {})) keys[k] = unhex(h);
  const gdks = {};
  const ring = new Keyring(group);
  for (const [ver, h] of Object.entries(vectors.gdks || {})) {
    counts.gdks++;
    const v = Number(ver);
    const name = "gdk " + ver;
    try {
      const g = await importGDK(group, v, unhex(h));
      gdks[ver] = g;
      const bad = [];
      if (hex(g.commit) !== vectors.commits[ver]) bad.push("commit " + hex(g.commit));
      const d = vectors.derived[ver] || {};
      for (const [lbl, l] of [["record", LABEL_RECORD], ["chain", LABEL_CHAIN], ["bind", LABEL_BIND]]) {
        const got = hex(await g.derive(l));
        if (got !== d[lbl]) bad.push(lbl + " " + got);
      }
      ring.pin(v, unhex(vectors.commits[ver]));
      record(name, "commit and derived keys as in the file", bad.length ? bad.join(", ") : null);
    } catch (e) {
      record(name, "commit and derived keys as in the file", errText(e));
    }
  }
  // open runs one vector's "open" on a slot text (bytes) with want.
  const open = async (input, op, want, trace) => {
    if (op.key !== undefined) {
      if (!keys[op.key]) throw new Error("no key " + op.key + " in the file");
      return openPublic(input, want, keys[op.key], trace);
    }
    if (op.code !== undefined) return openUnlock([input], want, op.code, trace);
    if (op.password !== undefined) return openPassword(input, want, op.password, trace);
    if (op.prf !== undefined) {
      return openPasskey(input, want, async (pin) => {
        if (op.prf_input !== undefined && hex(pin) !== op.prf_input) throw new Error("PRF input " + hex(pin) + ", want " + op.prf_input);
        return unhex(op.prf);
      }, trace);
    }
    if (op.chain_with !== undefined) {
      const g = gdks[String(op.chain_with)];
      if (!g) throw new Error("no GDK " + op.chain_with + " in the file");
      return openChain(input, want.group, g, trace);
    }
    throw new Error("unknown open " + JSON.stringify(Object.keys(op)));
  };
  for (const v of vectors.positive || []) {
    counts.positive++;
    const want = "open to GDK " + v.gdk_version + " with every intermediate as in the file";
    try {
      vecMembers(v.name, v, VEC_POSITIVE);
      vecOpen(v.open);
      vecMembers("want", v.want, ["group", "id"]);
      const bad = [];
      // The slot's text is canonical: re-encoding it gives the same bytes.
      if (encodeSlot(parseSlot(v.slot)) !== v.slot) bad.push("slot text is not canonical");
      const applies = intermediatesOf(parseSlot(v.slot));
      vecMembers("intermediate", v.intermediate, applies);
      for (const k of applies) if (v.intermediate[k] === undefined) bad.push("no intermediate " + k + " in the file");
      const trace = {};
      const res = await open(v.slot, v.open, v.want, trace);
      for (const [k, w] of Object.entries(v.intermediate || {})) {
        if (trace[k] === undefined) bad.push(k + " not computed");
        else if (trace[k] !== w) bad.push(k + " " + trace[k]);
      }
      if (v.open.prf_input !== undefined && trace.prf_input !== v.open.prf_input) bad.push("prf_input " + trace.prf_input);
      if (res.slot.gdk_version !== v.gdk_version || res.gdk.version !== v.gdk_version) bad.push("gdk_version " + res.slot.gdk_version);
      const raw = await exportGDK(res.gdk);
      if (hex(raw) !== v.gdk) bad.push("gdk differs");
      raw.fill(0);
      ring.add(res.slot, res.gdk);
      // Decoding is canonical: the slot encodes back to its text when the
      // file's text is canonical.
      record(v.name, want, bad.length ? bad.join(", ") : null);
    } catch (e) {
      record(v.name, want, errText(e));
    }
  }
  for (const v of vectors.negative || []) {
    counts.negative++;
    let got = null;
    try {
      vecMembers(v.name, v, VEC_NEGATIVE);
      if (!CLASSES.includes(v.class)) throw new Error("class " + v.class + " is not in the table of error classes");
      if (v.op === "open") {
        vecOpen(v.open);
        vecMembers("want", v.want, ["group", "id"]);
      } else if (v.open !== undefined || v.want !== undefined) {
        throw new Error("open and want belong to op open only");
      }
      const input = vecInput(v);
      switch (v.op) {
        case "parse-slot":
          parseSlot(input);
          break;
        case "parse-bundle":
          parseBundle(input);
          break;
        case "parse-record":
          parseRecord(input);
          break;
        case "open": {
          const res = await open(input, v.open || {}, v.want, null);
          ring.add(res.slot, res.gdk);
          break;
        }
        default:
          throw new Error("unknown op " + v.op);
      }
      got = "success";
    } catch (e) {
      const c = classOf(e);
      got = c === v.class ? null : errText(e);
    }
    record(v.name, "class " + v.class, got);
  }
  for (const v of vectors.records || []) {
    counts.records++;
    const want = "AAD, key and plaintext as in the file";
    try {
      vecMembers(v.name, v, VEC_RECORD);
      const bad = [];
      const r = parseRecord(v.record);
      if (r.gdk_version !== v.gdk_version) bad.push("gdk_version " + r.gdk_version);
      if (hex(recordAAD(r.group, r.id, r.gdk_version)) !== v.aad) bad.push("aad");
      const g = gdks[String(v.gdk_version)];
      if (!g) throw new Error("no GDK " + v.gdk_version + " in the file");
      if (hex(await g.derive(LABEL_RECORD)) !== v.key) bad.push("key");
      const out = await openRecord(v.record, g);
      const text = new TextDecoder().decode(out.plaintext);
      if (text !== v.plaintext) bad.push("plaintext");
      if (out.group !== r.group || out.id !== r.id || out.gdk_version !== v.gdk_version) bad.push("header");
      // Sealed again by this device, it opens to the same text.
      const again = await openRecord(await sealRecord(g, r.id, v.plaintext), g);
      if (new TextDecoder().decode(again.plaintext) !== v.plaintext) bad.push("re-sealed record");
      record(v.name, want, bad.length ? bad.join(", ") : null);
    } catch (e) {
      record(v.name, want, errText(e));
    }
  }
  return { passed, failures, counts };
}
