// The strict JSON profile of docs/FORMAT.md, rule for rule and class for
// class as format/strictjson (Go). JSON.parse cannot be used: it keeps the
// last of two duplicate keys, reads 1.0 as 1 and accepts null, escapes and
// non-ASCII that the Go decoder refuses. atob is not used either: it skips
// spaces and ignores non-zero trailing bits, so two texts would mean one
// key. Errors are DeviceErrors whose details give offsets and keys, never
// the content of a string value: values may be secrets.

import { type Bytes, utf8 } from "./bytes.js";
import { fail, type FormatCode } from "./errors.js";

export const MAX_DEPTH = 8;

export type Value =
  | { kind: "object"; obj: Member[] }
  | { kind: "array"; arr: Value[] }
  | { kind: "string"; str: string }
  | { kind: "int"; int: number };
export interface Member {
  key: string;
  val: Value;
}

function failAt(code: FormatCode, off: number, message: string): never {
  fail(code, message + " at offset " + off);
}

function quoteKey(k: string): string {
  return k.length > 32 ? JSON.stringify(k.slice(0, 32)) + "..." : JSON.stringify(k);
}

const allowedByte = (c: number) => (c >= 0x20 && c <= 0x7e) || c === 0x09 || c === 0x0a || c === 0x0d;

/**
 * parse decodes one object of the profile. A string is taken as its UTF-8
 * bytes, so any non-ASCII character is refused like any non-ASCII byte.
 * When an input breaks several rules the class is, by priority, "syntax",
 * then "range", then "duplicate-key".
 */
export function parse(input: Uint8Array | string): Value {
  const b = typeof input === "string" ? utf8(input) : input;
  if (!(b instanceof Uint8Array)) fail("syntax", "input is neither bytes nor a string");
  for (let i = 0; i < b.length; i++) if (!allowedByte(b[i]!)) failAt("syntax", i, "byte outside printable ASCII");
  const p = new Parser(b);
  p.ws();
  if (p.peek() !== 0x7b) failAt("syntax", p.i, "top-level value is not an object");
  const v = p.value();
  p.ws();
  if (p.i !== b.length) failAt("syntax", p.i, "data after the top-level object");
  if (p.rangeAt >= 0) failAt("range", p.rangeAt, "integer above 4294967295");
  if (p.dupAt >= 0) failAt("duplicate-key", p.dupAt, "key " + quoteKey(p.dupKey) + " appears twice");
  return v;
}

// Parser: syntax errors throw at once; range and duplicate-key errors are
// remembered (the first of each) and thrown only if the whole input is in
// the grammar.
class Parser {
  i = 0;
  depth = 0;
  rangeAt = -1;
  dupAt = -1;
  dupKey = "";
  constructor(readonly b: Uint8Array) {}

  // peek returns the next byte, or 0 at the end (never valid input).
  peek(): number {
    return this.i < this.b.length ? this.b[this.i]! : 0;
  }

  ws(): void {
    for (;;) {
      const c = this.peek();
      if (c !== 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) return;
      this.i++;
    }
  }

  value(): Value {
    const c = this.peek();
    if (c === 0x7b) return this.object();
    if (c === 0x5b) return this.array();
    if (c === 0x22) return { kind: "string", str: this.str() };
    if (c >= 0x30 && c <= 0x39) return this.integer();
    if (c === 0) failAt("syntax", this.i, "unexpected end of input");
    failAt("syntax", this.i, "expected an object, array, string or unsigned integer");
  }

  enter(): void {
    this.depth++;
    if (this.depth > MAX_DEPTH) failAt("syntax", this.i, "nesting deeper than " + MAX_DEPTH);
    this.i++;
    this.ws();
  }

  object(): Value {
    this.enter();
    const obj: Member[] = [];
    if (this.peek() === 0x7d) {
      this.i++;
      this.depth--;
      return { kind: "object", obj };
    }
    const seen = new Set<string>();
    for (;;) {
      if (this.peek() !== 0x22) failAt("syntax", this.i, "expected a key string");
      const at = this.i;
      const key = this.str();
      if (seen.has(key) && this.dupAt < 0) {
        this.dupAt = at;
        this.dupKey = key;
      }
      seen.add(key);
      this.ws();
      if (this.peek() !== 0x3a) failAt("syntax", this.i, "expected ':' after a key");
      this.i++;
      this.ws();
      obj.push({ key, val: this.value() });
      this.ws();
      const c = this.peek();
      if (c === 0x2c) {
        this.i++;
        this.ws();
        continue;
      }
      if (c === 0x7d) {
        this.i++;
        this.depth--;
        return { kind: "object", obj };
      }
      failAt("syntax", this.i, "expected ',' or '}'");
    }
  }

  array(): Value {
    this.enter();
    const arr: Value[] = [];
    if (this.peek() === 0x5d) {
      this.i++;
      this.depth--;
      return { kind: "array", arr };
    }
    for (;;) {
      arr.push(this.value());
      this.ws();
      const c = this.peek();
      if (c === 0x2c) {
        this.i++;
        this.ws();
        continue;
      }
      if (c === 0x5d) {
        this.i++;
        this.depth--;
        return { kind: "array", arr };
      }
      failAt("syntax", this.i, "expected ',' or ']'");
    }
  }

  // str reads a string token; bytes are ASCII here, one code unit each.
  str(): string {
    const open = this.i;
    this.i++;
    const parts: string[] = [];
    let seg = this.i;
    for (;;) {
      const c = this.peek();
      if (c === 0) failAt("syntax", open, "unterminated string");
      if (c === 0x22) {
        parts.push(ascii(this.b, seg, this.i));
        this.i++;
        return parts.join("");
      }
      if (c === 0x5c) {
        const e = this.i + 1 < this.b.length ? this.b[this.i + 1]! : 0;
        if (e !== 0x22 && e !== 0x5c) {
          if (e === 0) failAt("syntax", open, "unterminated string");
          failAt("syntax", this.i, 'escape other than \\" or \\\\ in a string');
        }
        parts.push(ascii(this.b, seg, this.i), String.fromCharCode(e));
        this.i += 2;
        seg = this.i;
        continue;
      }
      if (c < 0x20) failAt("syntax", this.i, "control byte in a string");
      this.i++;
    }
  }

  integer(): Value {
    const start = this.i;
    for (let c = this.peek(); c >= 0x30 && c <= 0x39; c = this.peek()) this.i++;
    const n = this.i - start;
    if (this.b[start] === 0x30 && n > 1) failAt("syntax", start, "integer with a leading zero");
    let x = 0;
    if (n <= 10) for (let j = start; j < this.i; j++) x = x * 10 + (this.b[j]! - 0x30);
    if (n > 10 || x > 0xffffffff) {
      if (this.rangeAt < 0) this.rangeAt = start;
      x = 0;
    }
    return { kind: "int", int: x };
  }
}

function ascii(b: Uint8Array, from: number, to: number): string {
  let s = "";
  for (let i = from; i < to; i += 8192) s += String.fromCharCode(...b.subarray(i, Math.min(to, i + 8192)));
  return s;
}

/**
 * encode returns the canonical encoding of v: no whitespace, members in
 * stored order, only the \" and \\ escapes. It refuses a value parse could
 * not have returned, so that whatever is written, both decoders read.
 */
export function encode(v: Value): string {
  if (!v || v.kind !== "object") fail("syntax", "top-level value is not an object");
  const out: string[] = [];
  encodeValue(out, v, 1);
  return out.join("");
}

function encodeValue(out: string[], v: Value, depth: number): void {
  const kind = v && (v as { kind?: unknown }).kind;
  if ((kind === "object" || kind === "array") && depth > MAX_DEPTH) fail("syntax", "nesting deeper than " + MAX_DEPTH);
  switch (kind) {
    case "object": {
      const o = v as { obj: Member[] };
      if (!Array.isArray(o.obj)) fail("syntax", "object without members");
      out.push("{");
      const seen = new Set<string>();
      o.obj.forEach((m, i) => {
        if (typeof m.key !== "string") fail("syntax", "key that is not a string");
        if (seen.has(m.key)) fail("duplicate-key", "key " + quoteKey(m.key) + " appears twice");
        seen.add(m.key);
        if (i > 0) out.push(",");
        encodeString(out, m.key);
        out.push(":");
        encodeValue(out, m.val, depth + 1);
      });
      out.push("}");
      return;
    }
    case "array": {
      const a = v as { arr: Value[] };
      if (!Array.isArray(a.arr)) fail("syntax", "array without elements");
      out.push("[");
      a.arr.forEach((e, i) => {
        if (i > 0) out.push(",");
        encodeValue(out, e, depth + 1);
      });
      out.push("]");
      return;
    }
    case "string": {
      const s = (v as { str: unknown }).str;
      if (typeof s !== "string") fail("syntax", "string value that is not a string");
      encodeString(out, s);
      return;
    }
    case "int": {
      const n = (v as { int: unknown }).int;
      if (typeof n !== "number" || !Number.isInteger(n) || n < 0 || n > 0xffffffff) fail("range", "integer outside 0..4294967295");
      out.push(String(n));
      return;
    }
  }
  fail("syntax", "value of invalid kind");
}

function encodeString(out: string[], s: string): void {
  let r = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x22 || c === 0x5c) r += "\\" + s[i];
    else if (c >= 0x20 && c <= 0x7e) r += s[i];
    else fail("syntax", "string byte outside printable ASCII");
  }
  out.push(r + '"');
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_DECODE = (() => {
  const t = new Int16Array(128).fill(-1);
  for (let i = 0; i < 64; i++) t[B64.charCodeAt(i)] = i;
  return t;
})();

/**
 * decodeBase64 decodes canonical padded standard base64 (RFC 4648 §4): the
 * standard alphabet, '=' padding to a multiple of 4 and zero unused bits,
 * so each byte string has exactly one text. "" is refused.
 */
export function decodeBase64(s: string): Bytes {
  if (typeof s !== "string") fail("base64", "not a string");
  const n = s.length;
  if (n === 0) fail("base64", "empty");
  if (n % 4 !== 0) fail("base64", "length " + n + " is not a multiple of 4");
  let pad = 0;
  if (s.charCodeAt(n - 1) === 0x3d) {
    pad = 1;
    if (s.charCodeAt(n - 2) === 0x3d) pad = 2;
  }
  const out = new Uint8Array((n / 4) * 3 - pad);
  let acc = 0;
  let bits = 0;
  let o = 0;
  for (let i = 0; i < n - pad; i++) {
    const c = s.charCodeAt(i);
    const d = c < 128 ? B64_DECODE[c]! : -1;
    if (d < 0) failAt("base64", i, "character outside the base64 alphabet");
    acc = (acc << 6) | d;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = acc >> bits;
      acc &= (1 << bits) - 1;
    }
  }
  if (acc !== 0) failAt("base64", n - pad - 1, "non-zero unused bits (not canonical)");
  return out;
}

/** encodeBase64 is the inverse of decodeBase64. */
export function encodeBase64(b: Uint8Array): string {
  let s = "";
  let i = 0;
  for (; i + 3 <= b.length; i += 3) {
    const x = (b[i]! << 16) | (b[i + 1]! << 8) | b[i + 2]!;
    s += B64[x >> 18]! + B64[(x >> 12) & 63]! + B64[(x >> 6) & 63]! + B64[x & 63]!;
  }
  if (b.length - i === 1) {
    const x = b[i]! << 16;
    s += B64[x >> 18]! + B64[(x >> 12) & 63]! + "==";
  } else if (b.length - i === 2) {
    const x = (b[i]! << 16) | (b[i + 1]! << 8);
    s += B64[x >> 18]! + B64[(x >> 12) & 63]! + B64[(x >> 6) & 63]! + "=";
  }
  return s;
}

function article(kind: unknown): string {
  switch (kind) {
    case "object":
    case "array":
    case "int":
      return "an " + kind;
    case "string":
      return "a string";
  }
  return "an invalid value";
}

/**
 * StrictObject reads the fields of one object into a format's structure,
 * as Go's strictjson.Object: the allow-list is checked up front, then each
 * accessor checks one required field's type and bounds. Required values
 * are never empty: minimums below 1 are raised to 1.
 */
export class StrictObject {
  constructor(readonly path: string, readonly members: readonly Member[]) {}

  has(key: string): boolean {
    return this.members.some((m) => m.key === key);
  }

  private field<K extends Value["kind"]>(key: string, want: K): Extract<Value, { kind: K }> {
    const m = this.members.find((x) => x.key === key);
    if (!m) fail("missing-key", this.name(key) + " is missing");
    const kind = m.val && m.val.kind;
    if (kind !== want) fail("type", this.name(key) + " is " + article(kind) + ", want " + article(want));
    return m.val as Extract<Value, { kind: K }>;
  }

  string(key: string, min: number, max: number): string {
    const v = this.field(key, "string");
    this.length(key, "length", v.str.length, min, max);
    return v.str;
  }

  uint32(key: string, min: number, max: number): number {
    const v = this.field(key, "int");
    if (v.int < min || v.int > max) fail("range", this.name(key) + " is " + v.int + ", want " + min + ".." + max);
    return v.int;
  }

  /** bytes: the empty string is "range", like every empty required value. */
  bytes(key: string, minLen: number, maxLen: number): Bytes {
    const v = this.field(key, "string");
    if (v.str === "") fail("range", this.name(key) + " is empty");
    let b: Bytes;
    try {
      b = decodeBase64(v.str);
    } catch (e) {
      fail("base64", this.name(key) + ": " + ((e as { detail?: string }).detail ?? ""));
    }
    this.length(key, "decoded length", b.length, minLen, maxLen);
    return b;
  }

  child(key: string, ...allowed: string[]): StrictObject {
    return readObject(this.field(key, "object"), this.name(key), allowed);
  }

  array(key: string, min: number, max: number): Value[] {
    const v = this.field(key, "array");
    this.length(key, "length", v.arr.length, min, max);
    return v.arr;
  }

  private length(key: string, what: string, n: number, min: number, max: number): void {
    if (min < 1) min = 1;
    if (n < min || n > max) {
      if (n === 0) fail("range", this.name(key) + " is empty");
      fail("range", this.name(key) + " has " + what + " " + n + ", want " + min + ".." + max);
    }
  }

  private name(key: string): string {
    return this.path + "." + key;
  }
}

/** object returns a reader for v, an object whose keys must all be in allowed. */
export function object(v: Value, ...allowed: string[]): StrictObject {
  return readObject(v, "$", allowed);
}

function readObject(v: Value, path: string, allowed: string[]): StrictObject {
  if (!v || v.kind !== "object") fail("type", path + " is " + article(v && v.kind) + ", want an object");
  for (const m of v.obj) if (!allowed.includes(m.key)) fail("unknown-key", path + " has unknown key " + quoteKey(m.key));
  return new StrictObject(path, v.obj);
}
