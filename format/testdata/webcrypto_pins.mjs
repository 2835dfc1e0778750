// Independent pins for format_test.go, computed the way the browser device
// computes them: with WebCrypto (node >= 20, globalThis.crypto.subtle) and
// nothing of escrowd. Run: node format/testdata/webcrypto_pins.mjs
// The outputs are pasted into format/format_test.go (webcryptoPins).
const subtle = globalThis.crypto.subtle;
import { createECDH } from "node:crypto";

const hex = (b) => Buffer.from(b).toString("hex");
const unhex = (s) => new Uint8Array(Buffer.from(s, "hex"));
const utf8 = (s) => new TextEncoder().encode(s);
const cat = (...as) => {
  const out = new Uint8Array(as.reduce((n, a) => n + a.length, 0));
  let i = 0;
  for (const a of as) { out.set(a, i); i += a.length; }
  return out;
};
const range = (n, f) => Uint8Array.from({ length: n }, (_, i) => f(i));

// A 32-byte DK label: "escrowd v2 <name>", right-padded with zero bytes.
const label = (name) => { const l = new Uint8Array(32); l.set(utf8("escrowd v2 " + name)); return l; };

// DK exactly as format.DK's doc comment says: for each 16-byte half of the
// label, AES-CBC with a zero IV, keep the first 16 bytes of the output.
async function dk(key, lbl) {
  const k = await subtle.importKey("raw", key, "AES-CBC", false, ["encrypt"]);
  const iv = new Uint8Array(16);
  const a = new Uint8Array(await subtle.encrypt({ name: "AES-CBC", iv }, k, lbl.slice(0, 16))).slice(0, 16);
  const b = new Uint8Array(await subtle.encrypt({ name: "AES-CBC", iv }, k, lbl.slice(16, 32))).slice(0, 16);
  return cat(a, b);
}

const out = {};
const key0 = range(32, (i) => i); // 00 01 .. 1f
out.dk_record = hex(await dk(key0, label("record key")));
out.dk_chain = hex(await dk(key0, label("chain key")));
out.dk_bind = hex(await dk(key0, label("bind key")));
out.dk_zero = hex(await dk(new Uint8Array(32), new Uint8Array(32)));
// FIPS-197 C.3 plaintext in both halves.
out.dk_fips197 = hex(await dk(key0, cat(unhex("00112233445566778899aabbccddeeff"), unhex("00112233445566778899aabbccddeeff"))));

// ecdh-p256 end to end, with two fixed scalars.
const dE = "c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721";
const dR = "519b423d715f8b581f4fa8ee59f4771a5b44c8130b4e3eacca54a56dda72b464";
const pub = (d) => { const e = createECDH("prime256v1"); e.setPrivateKey(Buffer.from(d, "hex")); return new Uint8Array(e.getPublicKey()); };
const epk = pub(dE), rpk = pub(dR);
const jwk = (d, p) => ({ kty: "EC", crv: "P-256", d: Buffer.from(d, "hex").toString("base64url"),
  x: Buffer.from(p.slice(1, 33)).toString("base64url"), y: Buffer.from(p.slice(33)).toString("base64url") });
const recipient = await subtle.importKey("jwk", jwk(dR, rpk), { name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]);
const ephPublic = await subtle.importKey("raw", epk, { name: "ECDH", namedCurve: "P-256" }, false, []);
const z = new Uint8Array(await subtle.deriveBits({ name: "ECDH", public: ephPublic }, recipient, 256));
const info = new Uint8Array(await subtle.digest("SHA-256", cat(utf8("escrowd v2 ecdh-p256"), new Uint8Array([0]), epk, rpk)));
out.ecdh_epk = hex(epk);
out.ecdh_rpk = hex(rpk);
out.ecdh_z = hex(z);
out.ecdh_info = hex(info);
out.ecdh_key = hex(await dk(z, info));

// Bind: HMAC-SHA256 under DK(gdk, bind label) of the full-context message
// that format/testdata/pins.py builds (fullMessage there).
const fullMessage = "657363726f776420763220736c6f740006756e6c6f636b1470626b6466322d7368613235362d6165732d6b77000966616d696c792d343200000002000000030003626f6200030102034104111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111022222222222222222222222222222222000100000000000700000003083333333333333333204444444444444444444444444444444444444444444444444444444444444444002855555555555555555555555555555555555555555555555555555555555555555555555555555555";
const hk = await subtle.importKey("raw", await dk(key0, label("bind key")), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
out.bind_full = hex(await subtle.sign("HMAC", hk, unhex(fullMessage)));

// passkey-prf: HKDF-SHA256(prf output, salt, "escrowd v2 passkey-prf").
const prf = range(32, (i) => 0xa0 + (i % 16)), salt32 = range(32, (i) => 255 - i);
const hkdfKey = await subtle.importKey("raw", prf, "HKDF", false, ["deriveBits"]);
out.passkey_key = hex(await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: salt32, info: utf8("escrowd v2 passkey-prf") }, hkdfKey, 256));

// password: PBKDF2-HMAC-SHA256 of an NFC password.
const pw = await subtle.importKey("raw", utf8("Grüße, Jürgen".normalize("NFC")), "PBKDF2", false, ["deriveBits"]);
out.password_key = hex(await subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt: range(16, (i) => i), iterations: 1000 }, pw, 256));

console.log(JSON.stringify(out, null, 1));
