// Unlock codes (docs/FORMAT.md, "Unlock codes"): what a person typed,
// read exactly as escrow/unlockcode (Go) reads it. The normalisation is
// spelled out code point by code point, never with toUpperCase or
// normalize(): those map ı to I, ſ to S, the Kelvin sign to k and
// fullwidth letters to ASCII, so the browser would accept typings Go
// refuses, and the two would disagree on which slot key a typing gives.

import type { Bytes } from "./bytes.js";
import { DeviceError } from "./errors.js";

export const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
export const SYMBOLS = 16;
export const DATA_BITS = 70;
export const MAX_CODE_INDEX = 31;
export const MIN_MATERIAL = 9;

/** The separators a person, phone keyboard, PDF or chat client may put between symbols: closed and normative. */
export const SEPARATORS: ReadonlySet<number> = new Set([
  0x0009, 0x0020, 0x00a0, 0x2007, 0x202f, 0x3000, // spaces
  0x002d, 0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2015, // dashes
  0x2212, 0xfe58, 0xfe63, 0xff0d,
]);

// Symbol value of an upper-case ASCII code point, look-alikes folded in
// (I, L → 1; O → 0), or -1.
function symbolValue(cp: number): number {
  if (cp === 0x49 || cp === 0x4c) return 1;
  if (cp === 0x4f) return 0;
  return cp < 0x80 ? ALPHABET.indexOf(String.fromCharCode(cp)) : -1;
}

// mulX multiplies by x in GF(32) = GF(2)[x]/(x^5+x^2+1).
function mulX(a: number): number {
  a <<= 1;
  return a & 32 ? a ^ 0b100101 : a;
}

// damm over GF(32) with a∘b = x·a ⊕ b: a sequence ending in its check
// symbol gives 0; every single substitution or adjacent swap does not.
function damm(values: readonly number[]): number {
  let acc = 0;
  for (const s of values) acc = mulX(acc) ^ s;
  return acc;
}

function display(values15: readonly number[]): string {
  const all = [...values15, mulX(damm(values15))];
  let s = "";
  all.forEach((v, i) => {
    if (i > 0 && i % 4 === 0) s += "-";
    s += ALPHABET[v];
  });
  return s;
}

export interface ParsedCode {
  /** The unlock slot to open: the one whose unlock.index is this, newest epoch first. */
  index: number;
  /** The PBKDF2 password: symbols 0 to 14, upper-case ASCII. Zero it after use. */
  secret: Bytes;
  /** The canonical form (XXXX-XXXX-XXXX-XXXX). A secret too. */
  display: string;
}

/**
 * parseCode reads a code as a person typed it. Errors: "not-a-code"
 * (length, a character outside the alphabet) and "mistyped" (the check
 * symbol). Details carry positions and counts, never the typed text.
 */
export function parseCode(typed: string): ParsedCode {
  if (typeof typed !== "string") throw new DeviceError("not-a-code", "not text");
  const sym: number[] = [];
  let pos = 0;
  // for...of walks code points; a lone surrogate is refused like any
  // character outside the alphabet.
  for (const ch of typed) {
    pos++;
    let cp = ch.codePointAt(0)!;
    if (SEPARATORS.has(cp)) continue;
    if (cp >= 0x61 && cp <= 0x7a) cp -= 0x20; // ASCII a-z only
    const v = symbolValue(cp);
    if (v < 0) throw new DeviceError("not-a-code", "character " + pos + " is not a letter or digit of the code alphabet");
    if (sym.length === SYMBOLS) throw new DeviceError("not-a-code", "more than " + SYMBOLS + " letters and digits");
    sym.push(v);
  }
  if (sym.length !== SYMBOLS) throw new DeviceError("not-a-code", sym.length + " letters and digits, want " + SYMBOLS);
  if (damm(sym) !== 0) throw new DeviceError("mistyped");
  const values15 = sym.slice(0, SYMBOLS - 1);
  const out = { index: values15[0]!, secret: new Uint8Array(values15.map((v) => ALPHABET.charCodeAt(v))), display: display(values15) };
  values15.fill(0);
  sym.fill(0);
  return out;
}

/** codeFromMaterial is the daemon's side (FromMaterial in Go): a device never needs it; the vectors check it. */
export function codeFromMaterial(index: number, material: Uint8Array): string {
  if (!Number.isInteger(index) || index < 0 || index > MAX_CODE_INDEX) throw new RangeError("index out of range");
  if (material.length < MIN_MATERIAL) throw new RangeError("need " + MIN_MATERIAL + " bytes of material");
  const values = [index];
  for (let i = 0; i < DATA_BITS / 5; i++) {
    const bit = i * 5;
    const w = (material[bit >> 3]! << 8) | (material[(bit >> 3) + 1] ?? 0);
    values.push((w >> (11 - (bit & 7))) & 31);
  }
  return display(values);
}

/** codeMessage is the daemon's HMAC input for a code (format v2), for the vectors. */
export function codeMessage(group: string, user: string, epoch: number, index: number, nonce: Uint8Array): Bytes {
  const te = new TextEncoder();
  const g = te.encode(group);
  const u = te.encode(user);
  const label = te.encode("escrowd unlock code v2\0");
  const b = new Uint8Array(label.length + 2 + g.length + 2 + u.length + 8 + 1 + nonce.length);
  const dv = new DataView(b.buffer);
  let o = 0;
  b.set(label, o);
  o += label.length;
  dv.setUint16(o, g.length);
  o += 2;
  b.set(g, o);
  o += g.length;
  dv.setUint16(o, u.length);
  o += 2;
  b.set(u, o);
  o += u.length;
  dv.setUint32(o, epoch);
  o += 4;
  dv.setUint32(o, index);
  o += 4;
  dv.setUint8(o, nonce.length);
  o += 1;
  b.set(nonce, o);
  return b;
}
