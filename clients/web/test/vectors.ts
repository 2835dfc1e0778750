// Runners of the shared vector files, in the browser (the e2e test's page)
// and in node (node_test.ts): format/strictjson/testdata/vectors.json,
// escrow/unlockcode/testdata/vectors.json and
// escrow/device/testdata/vectors.json, the files the Go packages run.

import { type Bytes, hex, unhex } from "../src/bytes.js";
import { DeviceError, FORMAT_CODES, codeOf } from "../src/errors.js";
import {
  LABEL_BIND, LABEL_CHAIN, LABEL_RECORD, encodeSlot, parseBundle, parseRecord, parseSlot, pbkdf2, recordAAD, MIN_UNLOCK_ITERATIONS, type Slot,
} from "../src/format.js";
import {
  type GDK, type Opened, type Trace, type Want, exportGDK, importGDK, openChain, openPasskey, openPassword, openPublic, openRecord, openUnlock, sealRecord,
} from "../src/gdk.js";
import { Keyring } from "../src/keyring.js";
import * as sj from "../src/strictjson.js";
import { SEPARATORS, codeFromMaterial, codeMessage, parseCode } from "../src/unlockcode.js";

const td = new TextDecoder();
type Any = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

// ---- format/strictjson ----------------------------------------------------

const SJ_CLASSES = ["syntax", "duplicate-key", "unknown-key", "missing-key", "type", "range", "base64"];

interface Field {
  key: string;
  type: string;
  min: number;
  max: number;
  optional?: boolean;
  allowed?: string[];
  fields?: Field[];
  items?: { allowed?: string[]; fields?: Field[] };
}

// readFields reads an object as a decoder following schema would, in the
// vectors' "want" shape: bytes as hex, arrays without "items" as their length.
function readFields(o: sj.StrictObject, fields: Field[]): Any {
  const res: Any = {};
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
        res[f.key] = hex(o.bytes(f.key, f.min, f.max));
        break;
      case "object":
        res[f.key] = readFields(o.child(f.key, ...(f.allowed ?? [])), f.fields ?? []);
        break;
      case "array": {
        const arr = o.array(f.key, f.min, f.max);
        const items = f.items;
        res[f.key] = items ? arr.map((e) => readFields(sj.object(e, ...(items.allowed ?? [])), items.fields ?? [])) : arr.length;
        break;
      }
      default:
        throw new Error("schema: unknown type " + f.type);
    }
  }
  return res;
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && deepEqual((a as Any)[k], (b as Any)[k]));
}

function runStrictJSONVector(v: Any): string | null {
  if ((v.input === undefined) === (v.input_hex === undefined)) return "want exactly one of input and input_hex";
  if (v.ok === (v.class !== undefined) || (!v.ok && !SJ_CLASSES.includes(v.class))) return "bad ok/class";
  const input: Bytes = v.input !== undefined ? new TextEncoder().encode(v.input) : unhex(v.input_hex);
  const text: string = v.input !== undefined ? v.input : String.fromCharCode(...input);
  let got: unknown;
  let err: DeviceError | null = null;
  try {
    switch (v.op) {
      case "parse":
        got = sj.parse(input);
        break;
      case "base64":
        got = sj.decodeBase64(text);
        break;
      case "fields":
        got = readFields(sj.object(sj.parse(input), ...v.schema.allowed), v.schema.fields);
        break;
      default:
        return "unknown op " + v.op;
    }
  } catch (e) {
    if (!(e instanceof DeviceError)) return "unexpected " + (e instanceof Error ? e.stack : String(e));
    err = e;
  }
  if (!v.ok) {
    if (!err) return "success, want " + v.class;
    if (err.code !== v.class) return "error " + err.message + ", want class " + v.class;
    return null;
  }
  if (err) return "error " + err.message + ", want success";
  try {
    switch (v.op) {
      case "parse": {
        const enc = sj.encode(got as sj.Value);
        if (enc !== v.canonical) return "encode = " + JSON.stringify(enc) + ", want " + JSON.stringify(v.canonical);
        if (!deepEqual(sj.parse(enc), got)) return "parse(encode(v)) differs";
        break;
      }
      case "base64":
        if (hex(got as Bytes) !== v.hex) return "decoded " + hex(got as Bytes) + ", want " + v.hex;
        if (sj.encodeBase64(got as Bytes) !== text) return "encodeBase64 differs from the input";
        break;
      case "fields":
        if (!deepEqual(got, v.want)) return "read " + JSON.stringify(got) + ", want " + JSON.stringify(v.want);
        break;
    }
  } catch (e) {
    return "round trip: " + (e instanceof Error ? e.message : String(e));
  }
  return null;
}

export function runStrictJSONVectors(vectors: Any[]): { passed: number; failures: { name: string; error: string }[] } {
  let passed = 0;
  const failures: { name: string; error: string }[] = [];
  const names = new Set<string>();
  for (const v of vectors) {
    const error = names.has(v.name) ? "duplicate vector name" : runStrictJSONVector(v);
    names.add(v.name);
    if (error === null) passed++;
    else failures.push({ name: v.name, error });
  }
  return { passed, failures };
}

// ---- escrow/unlockcode ------------------------------------------------------

function outcome(typed: string): string {
  try {
    return parseCode(typed).display;
  } catch (e) {
    const c = codeOf(e);
    if (c) return c;
    throw e;
  }
}

/** runUnlockCodeVectors: failures are strings naming the vector. */
export async function runUnlockCodeVectors(vectors: Any): Promise<{ passed: number; failures: string[] }> {
  let passed = 0;
  const failures: string[] = [];
  const check = (ok: boolean, what: string) => (ok ? passed++ : failures.push(what));
  const subtle = globalThis.crypto.subtle;
  for (const v of vectors.codes ?? []) {
    const name = "code " + v.code;
    try {
      const material = unhex(v.material);
      if (v.hmac) {
        const msg = codeMessage(v.hmac.group, v.hmac.user, v.hmac.epoch, v.index, unhex(v.hmac.nonce));
        check(hex(msg) === v.hmac.message, name + ": HMAC message");
        const k = await subtle.importKey("raw", unhex(v.hmac.unlock_key), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
        check(hex(await subtle.sign("HMAC", k, msg)) === v.material, name + ": HMAC material");
      }
      check(codeFromMaterial(v.index, material) === v.code, name + ": from material");
      for (const [label, typed] of [["code", v.code], ["typed", v.typed]]) {
        const p = parseCode(typed);
        check(p.display === v.code && p.index === v.index && td.decode(p.secret) === v.secret, name + ": parse " + label);
      }
      const p = parseCode(v.typed);
      if (v.iterations < MIN_UNLOCK_ITERATIONS) throw new Error("iterations below the floor");
      check(hex(await pbkdf2(p.secret, unhex(v.salt), v.iterations)) === v.key, name + ": key");
    } catch (e) {
      failures.push(name + ": " + (e instanceof Error ? e.message : String(e)));
    }
  }
  for (const v of vectors.typings ?? []) {
    let got: string;
    try {
      got = outcome(v.typed);
    } catch (e) {
      got = String(e);
    }
    check(got === v.code, "typing " + JSON.stringify(v.why) + ": got " + got);
  }
  for (const v of vectors.invalid ?? []) {
    let got: string;
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

// ---- escrow/device ------------------------------------------------------------

function errText(e: unknown): string {
  const c = codeOf(e);
  return c ? "error " + c + ": " + (e as Error).message : "exception: " + (e instanceof Error ? e.message : String(e));
}

const VEC_TOP = ["comment", "format", "group", "keys", "gdks", "commits", "derived", "positive", "negative", "records"];
const VEC_POSITIVE = ["name", "slot", "open", "want", "intermediate", "gdk_version", "gdk"];
const VEC_NEGATIVE = ["name", "op", "input", "input_hex", "open", "want", "class"];
const VEC_RECORD = ["name", "record", "gdk_version", "aad", "key", "plaintext"];
const VEC_OPEN = [["key"], ["code"], ["password"], ["prf", "prf_input"], ["chain_with"]];
const VEC_KEYS = ["rsa2048", "rsa3072", "p256"];
const VEC_DERIVED = ["record", "chain", "bind"];

function intermediatesOf(s: Slot): string[] {
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

function vecMembers(what: string, o: unknown, allowed: string[]): void {
  if (!o || typeof o !== "object" || Array.isArray(o)) throw new Error(what + " is not an object");
  const extra = Object.keys(o).filter((k) => !allowed.includes(k));
  if (extra.length) throw new Error(what + " has members the file format does not list: " + extra.join(", "));
}

function vecOpen(op: Any): void {
  vecMembers("open", op, VEC_OPEN.flat());
  const keys = Object.keys(op).sort().join(",");
  if (!VEC_OPEN.some((set) => set.slice().sort().join(",") === keys)) throw new Error("open has " + keys + ", want exactly one way to open");
}

function vecInput(v: Any): string | Bytes {
  if ((v.input === undefined) === (v.input_hex === undefined)) throw new Error("want exactly one of input and input_hex");
  return v.input !== undefined ? v.input : unhex(v.input_hex);
}

export interface DeviceVectorRun {
  passed: number;
  failures: { name: string; want: string; got: string }[];
  counts: { gdks: number; positive: number; negative: number; records: number };
}

/**
 * runDeviceVectors: every GDK's commitment and derived keys; every positive
 * vector decoded, its intermediate values recomputed, opened and trusted
 * by a keyring that pinned the file's commitments; every negative vector
 * refused with exactly its class; every record opened and sealed again.
 */
export async function runDeviceVectors(vectors: Any): Promise<DeviceVectorRun> {
  let passed = 0;
  const failures: DeviceVectorRun["failures"] = [];
  const counts = { gdks: 0, positive: 0, negative: 0, records: 0 };
  const names = new Set<string>();
  const record = (name: string, want: string, got: string | null) => {
    if (names.has(name)) {
      failures.push({ name, want: "a unique name", got: "a duplicate vector name" });
      return;
    }
    names.add(name);
    if (got === null) passed++;
    else failures.push({ name, want, got });
  };
  if (vectors.format !== 2) {
    failures.push({ name: "format", want: "2", got: String(vectors.format) });
    return { passed, failures, counts };
  }
  try {
    vecMembers("the vector file", vectors, VEC_TOP);
    vecMembers("keys", vectors.keys, VEC_KEYS);
    for (const d of Object.values(vectors.derived ?? {})) vecMembers("derived", d, VEC_DERIVED);
  } catch (e) {
    failures.push({ name: "file", want: 'the members of "The vector file"', got: (e as Error).message });
  }
  const group: string = vectors.group;
  const keys: Record<string, Bytes> = {};
  for (const [k, h] of Object.entries(vectors.keys ?? {})) keys[k] = unhex(h as string);
  const gdks: Record<string, GDK> = {};
  const ring = new Keyring(group);
  for (const [ver, h] of Object.entries(vectors.gdks ?? {})) {
    counts.gdks++;
    const name = "gdk " + ver;
    const want = "commit and derived keys as in the file";
    try {
      const g = await importGDK(group, Number(ver), unhex(h as string));
      gdks[ver] = g;
      const bad: string[] = [];
      if (hex(g.commit) !== vectors.commits[ver]) bad.push("commit " + hex(g.commit));
      const d = vectors.derived[ver] ?? {};
      for (const [lbl, l] of [["record", LABEL_RECORD], ["chain", LABEL_CHAIN], ["bind", LABEL_BIND]] as const) {
        const got = hex(await g.derive(l));
        if (got !== d[lbl]) bad.push(lbl + " " + got);
      }
      ring.pin(Number(ver), unhex(vectors.commits[ver]));
      record(name, want, bad.length ? bad.join(", ") : null);
    } catch (e) {
      record(name, want, errText(e));
    }
  }
  const open = async (input: string | Bytes, op: Any, want: Want, trace?: Trace): Promise<Opened> => {
    if (op.key !== undefined) {
      const k = keys[op.key];
      if (!k) throw new Error("no key " + op.key + " in the file");
      return openPublic(input, want, k, trace);
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
  for (const v of vectors.positive ?? []) {
    counts.positive++;
    const want = "open to GDK " + v.gdk_version + " with every intermediate as in the file";
    try {
      vecMembers(v.name, v, VEC_POSITIVE);
      vecOpen(v.open);
      vecMembers("want", v.want, ["group", "id"]);
      const bad: string[] = [];
      if (encodeSlot(parseSlot(v.slot)) !== v.slot) bad.push("slot text is not canonical");
      const applies = intermediatesOf(parseSlot(v.slot));
      vecMembers("intermediate", v.intermediate, applies);
      for (const k of applies) if (v.intermediate[k] === undefined) bad.push("no intermediate " + k + " in the file");
      const trace: Trace = {};
      const res = await open(v.slot, v.open, v.want, trace);
      for (const [k, w] of Object.entries(v.intermediate ?? {})) {
        if (trace[k] === undefined) bad.push(k + " not computed");
        else if (trace[k] !== w) bad.push(k + " " + trace[k]);
      }
      if (v.open.prf_input !== undefined && trace["prf_input"] !== v.open.prf_input) bad.push("prf_input " + trace["prf_input"]);
      if (res.slot.gdk_version !== v.gdk_version || res.gdk.version !== v.gdk_version) bad.push("gdk_version " + res.slot.gdk_version);
      const raw = await exportGDK(res.gdk);
      if (hex(raw) !== v.gdk) bad.push("gdk differs");
      raw.fill(0);
      ring.add(res.slot, res.gdk);
      record(v.name, want, bad.length ? bad.join(", ") : null);
    } catch (e) {
      record(v.name, want, errText(e));
    }
  }
  for (const v of vectors.negative ?? []) {
    counts.negative++;
    let got: string | null = null;
    try {
      vecMembers(v.name, v, VEC_NEGATIVE);
      if (!(FORMAT_CODES as readonly string[]).includes(v.class)) throw new Error("class " + v.class + " is not in the table of error classes");
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
          const res = await open(input, v.open ?? {}, v.want);
          ring.add(res.slot, res.gdk);
          break;
        }
        default:
          throw new Error("unknown op " + v.op);
      }
      got = "success";
    } catch (e) {
      got = codeOf(e) === v.class ? null : errText(e);
    }
    record(v.name, "class " + v.class, got);
  }
  for (const v of vectors.records ?? []) {
    counts.records++;
    const want = "AAD, key and plaintext as in the file";
    try {
      vecMembers(v.name, v, VEC_RECORD);
      const bad: string[] = [];
      const r = parseRecord(v.record);
      if (r.gdk_version !== v.gdk_version) bad.push("gdk_version " + r.gdk_version);
      if (hex(recordAAD(r.group, r.id, r.gdk_version)) !== v.aad) bad.push("aad");
      const g = gdks[String(v.gdk_version)];
      if (!g) throw new Error("no GDK " + v.gdk_version + " in the file");
      if (hex(await g.derive(LABEL_RECORD)) !== v.key) bad.push("key");
      const out = await openRecord(v.record, g);
      if (td.decode(out.plaintext) !== v.plaintext) bad.push("plaintext");
      if (out.group !== r.group || out.id !== r.id || out.gdk_version !== v.gdk_version) bad.push("header");
      const again = await openRecord(await sealRecord(g, r.id, v.plaintext), g);
      if (td.decode(again.plaintext) !== v.plaintext) bad.push("re-sealed record");
      record(v.name, want, bad.length ? bad.join(", ") : null);
    } catch (e) {
      record(v.name, want, errText(e));
    }
  }
  return { passed, failures, counts };
}
