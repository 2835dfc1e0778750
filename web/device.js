// A device of escrowd's key bundle, written from docs/FORMAT.md with
// WebCrypto (crypto.subtle) and nothing else for cryptography. It opens
// every slot kind, follows a rotation chain and decrypts records.
"use strict";

const te = new TextEncoder();
const td = new TextDecoder();
const subtle = crypto.subtle;

export const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

// DeviceError carries a stable code for the UI and a message for people.
export class DeviceError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export const MESSAGES = {
  "not-a-code": "That is not an unlock code: a code has 16 letters and digits, in four groups of four.",
  "mistyped": "A character is wrong or two are swapped. Check the code with support and type it again.",
  "wrong-code": "This code is valid, but it does not open this device's data: it belongs to another user or to an older set of codes.",
  "damaged": "The code is right, but this device's copy of the key is damaged or was tampered with. Sync the device and try again.",
  "wrong-secret": "Wrong password or passkey.",
  "wrong-key": "This slot does not open with this device's key.",
  "malformed": "The key bundle is malformed.",
  "record": "The record does not decrypt with this group key.",
};

function fail(code, detail) {
  throw new DeviceError(code, MESSAGES[code] + (detail ? " (" + detail + ")" : ""));
}

export function b64(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function hex(u8) {
  return Array.from(new Uint8Array(u8), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function unhex(s) {
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16);
  return out;
}

function concat(...parts) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function u16(n) { return new Uint8Array([n >> 8, n & 255]); }
function u32(n) { return new Uint8Array([n >>> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255]); }

const KINDS = ["escrow", "member", "device", "unlock", "password", "passkey-prf", "chain"];

// parseSlot: JSON.parse and the checks a device needs (FORMAT.md).
export function parseSlot(json) {
  let s;
  try {
    s = typeof json === "string" ? JSON.parse(json) : json;
  } catch (e) {
    fail("malformed", "not JSON");
  }
  if (s.v !== 1 || !KINDS.includes(s.kind) || !(s.key_version >= 1)) fail("malformed", "version or kind");
  const w = b64(s.wrapped || "");
  const needs = { "ecdh-p256": 40, "aes-kw": 40, "pbkdf2-sha256-aes-kw": 40, "hkdf-sha256-aes-kw": 40 };
  if (s.suite in needs && w.length !== 40) fail("malformed", "wrapped key length");
  return s;
}

// ---- unlock codes -------------------------------------------------------

function damm(symbols) {
  let acc = 0;
  for (const s of symbols) {
    acc <<= 1;
    if (acc & 32) acc ^= 0b100101;
    acc ^= s;
  }
  return acc;
}

// parseCode reads a code as typed: any case, dashes and spaces ignored,
// I and L read as 1, O as 0. It returns the 15 data symbols (the secret).
export function parseCode(typed) {
  const sym = [];
  for (const ch0 of typed.toUpperCase()) {
    if (ch0 === "-" || ch0 === " ") continue;
    const ch = ch0 === "I" || ch0 === "L" ? "1" : ch0 === "O" ? "0" : ch0;
    const v = ALPHABET.indexOf(ch);
    if (v < 0) fail("not-a-code", "'" + ch0 + "' is not in the code alphabet");
    sym.push(v);
  }
  if (sym.length !== 16) fail("not-a-code", sym.length + " characters");
  if (damm(sym) !== 0) fail("mistyped");
  return sym.slice(0, 15).map((v) => ALPHABET[v]).join("");
}

// ---- KDFs -----------------------------------------------------------------

async function pbkdf2(secretBytes, salt, iterations) {
  const k = await subtle.importKey("raw", secretBytes, "PBKDF2", false, ["deriveBits"]);
  return new Uint8Array(await subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations }, k, 256));
}

async function hkdf(ikm, salt, info) {
  const k = await subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  return new Uint8Array(await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info: te.encode(info) }, k, 256));
}

async function hmac(key, msg) {
  const k = await subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await subtle.sign("HMAC", k, msg));
}

export async function checkValue(key) {
  return (await hmac(key, te.encode("escrowd key check v1"))).slice(0, 8);
}

// aesKWUnwrap unwraps a 32-byte key with AES-KW and returns its bytes.
async function aesKWUnwrap(kek, wrapped) {
  const k = await subtle.importKey("raw", kek, "AES-KW", false, ["unwrapKey"]);
  const key = await subtle.unwrapKey("raw", wrapped, k, "AES-KW", { name: "AES-GCM" }, true, ["decrypt"]);
  return new Uint8Array(await subtle.exportKey("raw", key));
}

// openSecretSlot: KDF, check value, AES-KW. trace gets the intermediates.
async function openSecretSlot(s, key, wrongCode, trace) {
  const check = await checkValue(key);
  if (trace) Object.assign(trace, { key: hex(key), check: hex(check) });
  if (hex(check) !== hex(b64(s.check))) fail(wrongCode);
  try {
    return await aesKWUnwrap(key, b64(s.wrapped));
  } catch (e) {
    fail("damaged");
  }
}

export async function openUnlock(slotJSON, typed, trace) {
  const s = parseSlot(slotJSON);
  if (s.kind !== "unlock") fail("malformed", "not an unlock slot");
  const secret = parseCode(typed);
  const key = await pbkdf2(te.encode(secret), b64(s.kdf.salt), s.kdf.iterations);
  if (trace) trace.secret = hex(te.encode(secret));
  return openSecretSlot(s, key, "wrong-code", trace);
}

export async function openPassword(slotJSON, password, trace) {
  const s = parseSlot(slotJSON);
  if (s.kind !== "password") fail("malformed", "not a password slot");
  const bytes = te.encode(password.normalize("NFC"));
  if (trace) trace.secret = hex(bytes);
  const key = await pbkdf2(bytes, b64(s.kdf.salt), s.kdf.iterations);
  return openSecretSlot(s, key, "wrong-secret", trace);
}

export async function openPasskey(slotJSON, prf, trace) {
  const s = parseSlot(slotJSON);
  if (s.kind !== "passkey-prf") fail("malformed", "not a passkey-prf slot");
  const key = await hkdf(prf, b64(s.kdf.salt), "escrowd passkey-prf v1");
  return openSecretSlot(s, key, "wrong-secret", trace);
}

// ---- public-key slots ---------------------------------------------------------

// openPublic opens an escrow, member or device slot with a PKCS#8 private
// key: RSA for the rsa-oaep suites, P-256 for ecdh-p256.
export async function openPublic(slotJSON, pkcs8, trace) {
  const s = parseSlot(slotJSON);
  const wrapped = b64(s.wrapped);
  if (s.suite === "rsa-oaep-sha1" || s.suite === "rsa-oaep-sha256") {
    const hash = s.suite === "rsa-oaep-sha1" ? "SHA-1" : "SHA-256";
    const priv = await subtle.importKey("pkcs8", pkcs8, { name: "RSA-OAEP", hash }, false, ["unwrapKey"]);
    try {
      const key = await subtle.unwrapKey("raw", wrapped, priv, { name: "RSA-OAEP" }, { name: "AES-GCM" }, true, ["decrypt"]);
      return new Uint8Array(await subtle.exportKey("raw", key));
    } catch (e) {
      fail("wrong-key");
    }
  }
  if (s.suite !== "ecdh-p256") fail("malformed", "suite " + s.suite);
  const priv = await subtle.importKey("pkcs8", pkcs8, { name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
  const jwk = await subtle.exportKey("jwk", priv);
  const rpk = concat(new Uint8Array([4]), b64url(jwk.x), b64url(jwk.y));
  const epk = b64(s.epk);
  let peer;
  try {
    peer = await subtle.importKey("raw", epk, { name: "ECDH", namedCurve: "P-256" }, false, []);
  } catch (e) {
    fail("malformed", "epk");
  }
  const z = new Uint8Array(await subtle.deriveBits({ name: "ECDH", public: peer }, priv, 256));
  const kind = te.encode(s.kind);
  const msg = concat(te.encode("escrowd ecdh-p256 v1"), new Uint8Array([0, kind.length]), kind, epk, rpk, new Uint8Array([1]));
  const key = await hmac(z, msg);
  if (trace) Object.assign(trace, { z: hex(z), message: hex(msg), key: hex(key) });
  try {
    return await aesKWUnwrap(key, wrapped);
  } catch (e) {
    fail("wrong-key");
  }
}

function b64url(s) {
  return b64(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4));
}

// openChain returns the GDK of version key_version-1 from a chain slot.
export async function openChain(slotJSON, newGDK) {
  const s = parseSlot(slotJSON);
  if (s.kind !== "chain" || s.suite !== "aes-kw") fail("malformed", "not a chain slot");
  try {
    return await aesKWUnwrap(newGDK, b64(s.wrapped));
  } catch (e) {
    fail("wrong-key", "chain of GDK version " + s.key_version);
  }
}

// ---- records ----------------------------------------------------------------

export function recordAAD(group, id, version) {
  const g = te.encode(group), i = te.encode(id);
  return concat(te.encode("escrowd record v1"), new Uint8Array([0]), u16(g.length), g, u16(i.length), i, u32(version));
}

export async function openRecord(recordJSON, gdk) {
  const r = typeof recordJSON === "string" ? JSON.parse(recordJSON) : recordJSON;
  if (r.v !== 1) fail("malformed", "record version");
  const iv = b64(r.iv);
  if (iv.length !== 12) fail("malformed", "iv");
  const key = await subtle.importKey("raw", gdk, { name: "AES-GCM" }, false, ["decrypt"]);
  try {
    const pt = await subtle.decrypt({ name: "AES-GCM", iv, additionalData: recordAAD(r.group, r.id, r.gdk_version), tagLength: 128 }, key, b64(r.ct));
    return td.decode(pt);
  } catch (e) {
    fail("record");
  }
}
