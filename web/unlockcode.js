// Unlock codes, format v2 (docs/FORMAT.md, "Unlock codes"), for the browser
// device: parse what a person typed exactly as escrow/unlockcode (Go) does,
// and derive the slot key with WebCrypto. No dependencies.
//
// The normalisation is spelled out code point by code point, never with
// toUpperCase or normalize(): those map ı to I, ſ to S, the Kelvin sign to
// k and fullwidth letters to ASCII, so the browser would accept typings
// that Go refuses, and the two would disagree on which slot key a typing
// gives.

export const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
export const SYMBOLS = 16;
export const DATA_BITS = 70;
export const MAX_INDEX = 31;
export const MIN_MATERIAL = 9;
// Below this the offline attack on a stolen slot drops under 2^80 work.
export const MIN_ITERATIONS = 1 << 16;

// The separators a person, phone keyboard, PDF or chat client may put
// between symbols. Closed and normative: anything else is refused, not
// guessed at.
export const SEPARATORS = new Set([
  0x0009, 0x0020, 0x00a0, 0x2007, 0x202f, 0x3000, // spaces
  0x002d, 0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2015, // dashes
  0x2212, 0xfe58, 0xfe63, 0xff0d,
]);

export const MESSAGES = {
  "not-a-code": "That is not an unlock code: a code has 16 letters and digits, in four groups of four.",
  "mistyped": "A character is wrong or two are swapped. Check the code with support and type it again.",
};

// CodeError carries a stable .code for the UI ("not-a-code" or "mistyped")
// and a detail with positions and counts only: the typed text is a secret
// and never goes into a message.
export class CodeError extends Error {
  constructor(code, detail) {
    super(MESSAGES[code] + (detail ? " (" + detail + ")" : ""));
    this.name = "CodeError";
    this.code = code;
  }
}

// Symbol value of an upper-case ASCII code point, look-alikes folded in
// (I, L → 1; O → 0), or -1.
function symbolValue(cp) {
  if (cp === 0x49 || cp === 0x4c) return 1; // I, L
  if (cp === 0x4f) return 0; // O
  return cp < 0x80 ? ALPHABET.indexOf(String.fromCharCode(cp)) : -1;
}

// mulX multiplies by x in GF(32) = GF(2)[x]/(x^5+x^2+1).
function mulX(a) {
  a <<= 1;
  return a & 32 ? a ^ 0b100101 : a;
}

// damm over GF(32) with a∘b = x·a ⊕ b: a sequence ending in its check
// symbol gives 0, and every single substitution or adjacent swap does not.
function damm(values) {
  let acc = 0;
  for (const s of values) acc = mulX(acc) ^ s;
  return acc;
}

function display(values15) {
  const all = [...values15, mulX(damm(values15))];
  let s = "";
  all.forEach((v, i) => {
    if (i > 0 && i % 4 === 0) s += "-";
    s += ALPHABET[v];
  });
  return s;
}

// parseCode reads a code as a person typed it (a string of code points).
// Returns {index, secret, display}: index names the unlock slot to open
// (the slot whose unlock.index equals it, newest epoch first), secret is
// the PBKDF2 password (symbols 0..14, upper-case ASCII), display the
// canonical form. Throws CodeError "not-a-code" or "mistyped".
export function parseCode(typed) {
  if (typeof typed !== "string") throw new CodeError("not-a-code", "not text");
  const sym = [];
  let pos = 0;
  // for...of walks code points; a lone surrogate comes out on its own and
  // is refused like any other character outside the alphabet.
  for (const ch of typed) {
    pos++;
    let cp = ch.codePointAt(0);
    if (SEPARATORS.has(cp)) continue;
    if (cp >= 0x61 && cp <= 0x7a) cp -= 0x20; // ASCII a-z only
    const v = symbolValue(cp);
    if (v < 0) throw new CodeError("not-a-code", "character " + pos + " is not a letter or digit of the code alphabet");
    if (sym.length === SYMBOLS) throw new CodeError("not-a-code", "more than " + SYMBOLS + " letters and digits");
    sym.push(v);
  }
  if (sym.length !== SYMBOLS) {
    throw new CodeError("not-a-code", sym.length + " letters and digits, want " + SYMBOLS);
  }
  if (damm(sym) !== 0) throw new CodeError("mistyped");
  const values15 = sym.slice(0, SYMBOLS - 1);
  const secret = new Uint8Array(values15.map((v) => ALPHABET.charCodeAt(v)));
  const out = { index: values15[0], secret, display: display(values15) };
  values15.fill(0);
  sym.fill(0);
  return out;
}

// codeFromMaterial is the daemon's side (FromMaterial in Go): the index in
// clear, then the first 70 bits of HSM material, most significant first.
// The device never needs it; the vectors check it.
export function codeFromMaterial(index, material) {
  if (!Number.isInteger(index) || index < 0 || index > MAX_INDEX) throw new RangeError("index out of range");
  if (material.length < MIN_MATERIAL) throw new RangeError("need " + MIN_MATERIAL + " bytes of material");
  const values = [index];
  for (let i = 0; i < DATA_BITS / 5; i++) {
    const bit = i * 5;
    const w = (material[bit >> 3] << 8) | (material[(bit >> 3) + 1] ?? 0);
    values.push((w >> (11 - (bit & 7))) & 31);
  }
  return display(values);
}

// deriveKey is the AES-256 key of the code's unlock slot:
// PBKDF2-HMAC-SHA256(secret, salt, iterations), 32 bytes.
export async function deriveKey(secretBytes, salt, iterations) {
  if (!Number.isInteger(iterations) || iterations < MIN_ITERATIONS) {
    throw new RangeError("unlock slot: " + iterations + " PBKDF2 iterations, want at least " + MIN_ITERATIONS);
  }
  const subtle = globalThis.crypto.subtle;
  const k = await subtle.importKey("raw", secretBytes, "PBKDF2", false, ["deriveBits"]);
  return new Uint8Array(await subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations }, k, 256));
}

// codeMessage is the daemon's HMAC input (format v2), nonce being the
// epoch's (16 bytes), for the vectors.
export function codeMessage(group, user, epoch, index, nonce) {
  const te = new TextEncoder();
  const g = te.encode(group), u = te.encode(user);
  const label = te.encode("escrowd unlock code v2\0");
  const b = new Uint8Array(label.length + 2 + g.length + 2 + u.length + 8 + 1 + nonce.length);
  const dv = new DataView(b.buffer);
  let o = 0;
  b.set(label, o); o += label.length;
  dv.setUint16(o, g.length); o += 2;
  b.set(g, o); o += g.length;
  dv.setUint16(o, u.length); o += 2;
  b.set(u, o); o += u.length;
  dv.setUint32(o, epoch); o += 4;
  dv.setUint32(o, index); o += 4;
  dv.setUint8(o, nonce.length); o += 1;
  b.set(nonce, o);
  return b;
}

const hex = (u8) => Array.from(u8, (b) => b.toString(16).padStart(2, "0")).join("");
const unhex = (s) => new Uint8Array((s.match(/../g) || []).map((h) => parseInt(h, 16)));

function outcome(typed) {
  try {
    return parseCode(typed).display;
  } catch (e) {
    if (e instanceof CodeError) return e.code;
    throw e;
  }
}

// runVectors runs escrow/unlockcode/testdata/vectors.json (parsed) and
// returns {passed, failures}: failures are strings naming the vector.
export async function runVectors(vectors) {
  let passed = 0;
  const failures = [];
  const check = (ok, what) => (ok ? passed++ : failures.push(what));
  const subtle = globalThis.crypto.subtle;
  for (const v of vectors.codes || []) {
    const name = "code " + v.code;
    try {
      const material = unhex(v.material);
      if (v.hmac) {
        const msg = codeMessage(v.hmac.group, v.hmac.user, v.hmac.epoch, v.index, unhex(v.hmac.nonce));
        check(hex(msg) === v.hmac.message, name + ": HMAC message");
        const k = await subtle.importKey("raw", unhex(v.hmac.unlock_key), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
        check(hex(new Uint8Array(await subtle.sign("HMAC", k, msg))) === v.material, name + ": HMAC material");
      }
      check(codeFromMaterial(v.index, material) === v.code, name + ": from material");
      for (const [label, typed] of [["code", v.code], ["typed", v.typed]]) {
        const p = parseCode(typed);
        check(p.display === v.code && p.index === v.index && new TextDecoder().decode(p.secret) === v.secret,
          name + ": parse " + label);
      }
      const p = parseCode(v.typed);
      check(hex(await deriveKey(p.secret, unhex(v.salt), v.iterations)) === v.key, name + ": key");
    } catch (e) {
      failures.push(name + ": " + e.message);
    }
  }
  for (const v of vectors.typings || []) {
    let got;
    try {
      got = outcome(v.typed);
    } catch (e) {
      got = String(e);
    }
    check(got === v.code, "typing " + JSON.stringify(v.why) + ": got " + got);
  }
  for (const v of vectors.invalid || []) {
    let got;
    try {
      got = outcome(v.typed);
    } catch (e) {
      got = String(e);
    }
    check(got === v.error, "invalid " + JSON.stringify(v.why) + ": got " + got);
  }
  const names = Array.from(SEPARATORS, (cp) => "U+" + cp.toString(16).toUpperCase().padStart(4, "0"));
  check(JSON.stringify(names) === JSON.stringify(vectors.separators), "separator set differs from the vectors");
  return { passed, failures };
}
