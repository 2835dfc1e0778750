// The strict JSON profile of escrowd's formats, in JavaScript. It mirrors
// format/strictjson (Go) rule for rule and error class for error class;
// both run format/strictjson/testdata/vectors.json (runVectors below), so
// a key bundle means the same thing to the daemon and to a browser.
// JSON.parse cannot be used: it keeps the last of two duplicate keys,
// reads 1.0 as 1 and accepts null, escapes and non-ASCII that Go's
// decoders treat differently. atob is not used either: it skips spaces
// and ignores non-zero trailing bits, so two texts would mean one key.
//
// Values mirror Go's strictjson.Value:
//   {kind: "object", obj: [{key, val}, ...]}   members in input order
//   {kind: "array", arr: [value, ...]}
//   {kind: "string", str: "..."}               printable ASCII only
//   {kind: "int", int: n}                      0 <= n <= 4294967295
"use strict";

export const MAX_DEPTH = 8;

// StrictJSONError carries the error class ("syntax", "duplicate-key",
// "unknown-key", "missing-key", "type", "range", "base64") in .cls, the
// same names as Go's strictjson.Class. Messages give offsets and keys,
// never the content of a string value: values may be secrets.
export class StrictJSONError extends Error {
  constructor(cls, message) {
    super("strictjson: " + cls + ": " + message);
    this.name = "StrictJSONError";
    this.cls = cls;
  }
}

// classOf mirrors Go's Class: the class of an error from this module, or "".
export function classOf(err) {
  return err instanceof StrictJSONError ? err.cls : "";
}

function fail(cls, message) {
  throw new StrictJSONError(cls, message);
}

function failAt(cls, off, message) {
  fail(cls, message + " at offset " + off);
}

// quoteKey renders a key from the input for a message: keys are names,
// not secrets, but only a short prefix is shown.
function quoteKey(k) {
  return k.length > 32 ? JSON.stringify(k.slice(0, 32)) + "..." : JSON.stringify(k);
}

const te = new TextEncoder();

function allowedByte(c) {
  return (c >= 0x20 && c <= 0x7e) || c === 0x09 || c === 0x0a || c === 0x0d;
}

// parse decodes one object in the profile from a Uint8Array, an
// ArrayBuffer or a string. A string is taken as its UTF-8 bytes, so any
// non-ASCII character is refused like any non-ASCII byte.
// When an input breaks several rules the class is fixed by priority:
// "syntax", then "range", then "duplicate-key".
export function parse(input) {
  const b = typeof input === "string" ? te.encode(input) : input instanceof ArrayBuffer ? new Uint8Array(input) : input;
  if (!(b instanceof Uint8Array)) fail("syntax", "input is neither bytes nor a string");
  for (let i = 0; i < b.length; i++) {
    if (!allowedByte(b[i])) failAt("syntax", i, "byte outside printable ASCII");
  }
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

// Parser is a recursive-descent parser. Syntax errors throw at once; range
// and duplicate-key errors are remembered (the first of each) and thrown
// only if the whole input is in the grammar.
class Parser {
  constructor(b) {
    this.b = b;
    this.i = 0;
    this.depth = 0;
    this.rangeAt = -1;
    this.dupAt = -1;
    this.dupKey = "";
  }

  // peek returns the next byte, or 0 at the end (0 never passes the byte
  // check, so it cannot be confused with input).
  peek() {
    return this.i < this.b.length ? this.b[this.i] : 0;
  }

  ws() {
    for (;;) {
      const c = this.peek();
      if (c !== 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) return;
      this.i++;
    }
  }

  value() {
    const c = this.peek();
    if (c === 0x7b) return this.object();
    if (c === 0x5b) return this.array();
    if (c === 0x22) return { kind: "string", str: this.str() };
    if (c >= 0x30 && c <= 0x39) return this.integer();
    if (c === 0) failAt("syntax", this.i, "unexpected end of input");
    failAt("syntax", this.i, "expected an object, array, string or unsigned integer");
  }

  enter() {
    this.depth++;
    if (this.depth > MAX_DEPTH) failAt("syntax", this.i, "nesting deeper than " + MAX_DEPTH);
    this.i++; // '{' or '['
    this.ws();
  }

  object() {
    this.enter();
    const v = { kind: "object", obj: [] };
    if (this.peek() === 0x7d) {
      this.i++;
      this.depth--;
      return v;
    }
    const seen = new Set();
    for (;;) {
      if (this.peek() !== 0x22) failAt("syntax", this.i, "expected a key string");
      const at = this.i;
      const key = this.str();
      if (seen.has(key)) {
        if (this.dupAt < 0) {
          this.dupAt = at;
          this.dupKey = key;
        }
      }
      seen.add(key);
      this.ws();
      if (this.peek() !== 0x3a) failAt("syntax", this.i, "expected ':' after a key");
      this.i++;
      this.ws();
      v.obj.push({ key, val: this.value() });
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
        return v;
      }
      failAt("syntax", this.i, "expected ',' or '}'");
    }
  }

  array() {
    this.enter();
    const v = { kind: "array", arr: [] };
    if (this.peek() === 0x5d) {
      this.i++;
      this.depth--;
      return v;
    }
    for (;;) {
      v.arr.push(this.value());
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
        return v;
      }
      failAt("syntax", this.i, "expected ',' or ']'");
    }
  }

  // str reads a string token. Bytes are known to be ASCII here, so each
  // byte is one UTF-16 code unit.
  str() {
    const open = this.i;
    this.i++; // '"'
    const parts = [];
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
        const e = this.i + 1 < this.b.length ? this.b[this.i + 1] : 0;
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

  integer() {
    const start = this.i;
    for (let c = this.peek(); c >= 0x30 && c <= 0x39; c = this.peek()) this.i++;
    const n = this.i - start;
    if (this.b[start] === 0x30 && n > 1) failAt("syntax", start, "integer with a leading zero");
    let x = 0;
    if (n <= 10) {
      // At most 10 digits: exact in a double.
      for (let j = start; j < this.i; j++) x = x * 10 + (this.b[j] - 0x30);
    }
    if (n > 10 || x > 0xffffffff) {
      if (this.rangeAt < 0) this.rangeAt = start;
      x = 0;
    }
    return { kind: "int", int: x };
  }
}

function ascii(b, from, to) {
  let s = "";
  // Chunked to stay below argument-count limits on long strings.
  for (let i = from; i < to; i += 8192) {
    s += String.fromCharCode.apply(null, b.subarray(i, Math.min(to, i + 8192)));
  }
  return s;
}

// encode returns the canonical encoding of v as a string (ASCII only): no
// whitespace, members in stored order, only the \" and \\ escapes. It
// refuses a value that parse could not have returned, so that whatever is
// written, both decoders read.
export function encode(v) {
  if (!v || v.kind !== "object") fail("syntax", "top-level value is not an object");
  const out = [];
  encodeValue(out, v, 1);
  return out.join("");
}

function encodeValue(out, v, depth) {
  const kind = v && v.kind;
  if ((kind === "object" || kind === "array") && depth > MAX_DEPTH) {
    fail("syntax", "nesting deeper than " + MAX_DEPTH);
  }
  switch (kind) {
    case "object": {
      if (!Array.isArray(v.obj)) fail("syntax", "object without members");
      out.push("{");
      const seen = new Set();
      v.obj.forEach((m, i) => {
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
    case "array":
      if (!Array.isArray(v.arr)) fail("syntax", "array without elements");
      out.push("[");
      v.arr.forEach((e, i) => {
        if (i > 0) out.push(",");
        encodeValue(out, e, depth + 1);
      });
      out.push("]");
      return;
    case "string":
      if (typeof v.str !== "string") fail("syntax", "string value that is not a string");
      encodeString(out, v.str);
      return;
    case "int":
      if (!Number.isInteger(v.int) || v.int < 0 || v.int > 0xffffffff) {
        fail("range", "integer outside 0..4294967295");
      }
      out.push(String(v.int));
      return;
  }
  fail("syntax", "value of invalid kind");
}

function encodeString(out, s) {
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

// decodeBase64 decodes canonical padded standard base64 (RFC 4648 §4) to a
// Uint8Array: the standard alphabet, '=' padding to a multiple of 4,
// nothing else, and zero unused bits in the last symbol, so that each byte
// string has exactly one text. "" is refused. Errors give offsets, never
// the text.
export function decodeBase64(s) {
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
    const d = c < 128 ? B64_DECODE[c] : -1;
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

// encodeBase64 is the inverse of decodeBase64 (an empty array gives "",
// which decodeBase64 refuses: fields hold at least one byte).
export function encodeBase64(u8) {
  let s = "";
  let i = 0;
  for (; i + 3 <= u8.length; i += 3) {
    const x = (u8[i] << 16) | (u8[i + 1] << 8) | u8[i + 2];
    s += B64[x >> 18] + B64[(x >> 12) & 63] + B64[(x >> 6) & 63] + B64[x & 63];
  }
  if (u8.length - i === 1) {
    const x = u8[i] << 16;
    s += B64[x >> 18] + B64[(x >> 12) & 63] + "==";
  } else if (u8.length - i === 2) {
    const x = (u8[i] << 16) | (u8[i + 1] << 8);
    s += B64[x >> 18] + B64[(x >> 12) & 63] + B64[(x >> 6) & 63] + "=";
  }
  return s;
}

function article(kind) {
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

// StrictObject reads the fields of one object into a format's structure,
// like Go's strictjson.Object. The allow-list is checked once, up front;
// then each accessor checks the type and bounds of one required field (an
// optional one is read with has() first). Required values are never empty:
// min bounds below 1 are raised to 1 for strings, bytes and arrays.
export class StrictObject {
  constructor(path, members) {
    this.path = path;
    this.members = members;
  }

  has(key) {
    return this.members.some((m) => m.key === key);
  }

  field(key, want) {
    const m = this.members.find((m) => m.key === key);
    if (!m) fail("missing-key", this.name(key) + " is missing");
    const kind = m.val && m.val.kind;
    if (kind !== want) fail("type", this.name(key) + " is " + article(kind) + ", want " + article(want));
    return m.val;
  }

  // string returns the string at key; its length must be within [min, max].
  string(key, min, max) {
    const v = this.field(key, "string");
    this.length(key, "length", v.str.length, min, max);
    return v.str;
  }

  // uint32 returns the integer at key, which must be within [min, max].
  uint32(key, min, max) {
    const v = this.field(key, "int");
    if (v.int < min || v.int > max) fail("range", this.name(key) + " is " + v.int + ", want " + min + ".." + max);
    return v.int;
  }

  // bytes returns the Uint8Array whose canonical base64 is the string at
  // key; the decoded length must be within [minLen, maxLen]. An empty
  // string is "range", like every empty required value, not "base64".
  bytes(key, minLen, maxLen) {
    const v = this.field(key, "string");
    if (v.str === "") fail("range", this.name(key) + " is empty");
    let b;
    try {
      b = decodeBase64(v.str);
    } catch (e) {
      fail("base64", this.name(key) + ": " + e.message.replace(/^strictjson: base64: /, ""));
    }
    this.length(key, "decoded length", b.length, minLen, maxLen);
    return b;
  }

  // child returns a reader for the object at key, whose keys must all be
  // in allowed.
  child(key, ...allowed) {
    return readObject(this.field(key, "object"), this.name(key), allowed);
  }

  // array returns the elements (values) of the array at key; its length
  // must be within [min, max]. Read an object element with object().
  array(key, min, max) {
    const v = this.field(key, "array");
    this.length(key, "length", v.arr.length, min, max);
    return v.arr;
  }

  length(key, what, n, min, max) {
    if (min < 1) min = 1;
    if (n < min || n > max) {
      if (n === 0) fail("range", this.name(key) + " is empty");
      fail("range", this.name(key) + " has " + what + " " + n + ", want " + min + ".." + max);
    }
  }

  name(key) {
    return this.path + "." + key;
  }
}

// object returns a reader for v, which must be an object whose keys are
// all in allowed (compared exactly: "Kind" is not "kind").
export function object(v, ...allowed) {
  return readObject(v, "$", allowed);
}

function readObject(v, path, allowed) {
  const kind = v && v.kind;
  if (kind !== "object") fail("type", path + " is " + article(kind) + ", want an object");
  for (const m of v.obj) {
    if (!allowed.includes(m.key)) fail("unknown-key", path + " has unknown key " + quoteKey(m.key));
  }
  return new StrictObject(path, v.obj);
}

// ---- shared vectors ----

function unhex(s) {
  if (s.length % 2 !== 0 || /[^0-9a-f]/i.test(s)) throw new Error("bad hex");
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16);
  return out;
}

function tohex(u8) {
  return Array.from(u8, (b) => b.toString(16).padStart(2, "0")).join("");
}

const CLASSES = ["syntax", "duplicate-key", "unknown-key", "missing-key", "type", "range", "base64"];

// readFields reads an object as a decoder following schema would and
// returns what it read in the vectors' "want" shape: bytes as hex, arrays
// without "items" as their length.
function readFields(o, fields) {
  const res = {};
  for (const f of fields) {
    if (f.optional && !o.has(f.key)) continue;
    switch (f.type) {
      case "string":
        res[f.key] = o.string(f.key, f.min, f.max);
        break;
      case "uint32":
        res[f.key] = o.uint32(f.key, f.min, f.max);
        break;
      case "bytes":
        res[f.key] = tohex(o.bytes(f.key, f.min, f.max));
        break;
      case "object":
        res[f.key] = readFields(o.child(f.key, ...(f.allowed || [])), f.fields || []);
        break;
      case "array": {
        const arr = o.array(f.key, f.min, f.max);
        res[f.key] = f.items
          ? arr.map((e) => readFields(object(e, ...(f.items.allowed || [])), f.items.fields || []))
          : arr.length;
        break;
      }
      default:
        throw new Error("schema: unknown type " + f.type);
    }
  }
  return res;
}

function deepEqual(a, b) {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && deepEqual(a[k], b[k]));
}

function runVector(v) {
  if ((v.input === undefined) === (v.input_hex === undefined)) return "want exactly one of input and input_hex";
  if (v.ok === (v.class !== undefined) || (!v.ok && !CLASSES.includes(v.class))) return "bad ok/class";
  const input = v.input !== undefined ? te.encode(v.input) : unhex(v.input_hex);
  // The base64 text is passed as a string, as a decoder gets it.
  const text = v.input !== undefined ? v.input : String.fromCharCode(...input);
  let got;
  let err = null;
  try {
    switch (v.op) {
      case "parse":
        got = parse(input);
        break;
      case "base64":
        got = decodeBase64(text);
        break;
      case "fields":
        got = readFields(object(parse(input), ...v.schema.allowed), v.schema.fields);
        break;
      default:
        return "unknown op " + v.op;
    }
  } catch (e) {
    if (!(e instanceof StrictJSONError)) return "unexpected " + (e && e.stack ? e.stack : e);
    err = e;
  }
  if (!v.ok) {
    if (!err) return "success, want " + v.class;
    if (err.cls !== v.class) return "error " + err.message + ", want class " + v.class;
    return null;
  }
  if (err) return "error " + err.message + ", want success";
  try {
    switch (v.op) {
      case "parse": {
        const enc = encode(got);
        if (enc !== v.canonical) return "encode = " + JSON.stringify(enc) + ", want " + JSON.stringify(v.canonical);
        if (!deepEqual(parse(enc), got)) return "parse(encode(v)) differs";
        break;
      }
      case "base64":
        if (tohex(got) !== v.hex) return "decoded " + tohex(got) + ", want " + v.hex;
        if (encodeBase64(got) !== text) return "encodeBase64 = " + encodeBase64(got) + ", want the input back";
        break;
      case "fields":
        if (!deepEqual(got, v.want)) return "read " + JSON.stringify(got) + ", want " + JSON.stringify(v.want);
        break;
    }
  } catch (e) {
    return "round trip: " + (e && e.message ? e.message : e);
  }
  return null;
}

// runVectors runs the cases of format/strictjson/testdata/vectors.json
// (already parsed with JSON.parse: the vector file itself is ordinary
// JSON) and returns {passed, failures: [{name, error}]}. Node's test and
// the browser test both call it.
export function runVectors(vectors) {
  let passed = 0;
  const failures = [];
  const names = new Set();
  for (const v of vectors) {
    let error = names.has(v.name) ? "duplicate vector name" : runVector(v);
    names.add(v.name);
    if (error === null) passed++;
    else failures.push({ name: v.name, error });
  }
  return { passed, failures };
}
