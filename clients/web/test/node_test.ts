// The vector files of the Go packages, run in node against the package
// (`npm test`, run by `make test`): the decoders of the key bundle must
// agree with Go's on every case. The browser test runs the same files in
// Chromium.

import { readFile } from "node:fs/promises";
import { DeviceError, codeOf } from "../src/errors.js";
import * as sj from "../src/strictjson.js";
import { parseCode } from "../src/unlockcode.js";
import { fuzz } from "./fuzz.js";
import { runDeviceVectors, runStrictJSONVectors, runUnlockCodeVectors } from "./vectors.js";

const root = new URL("../../../", import.meta.url);
const load = async (p: string) => JSON.parse(await readFile(new URL(p, root), "utf8"));
const fails: string[] = [];
const check = (name: string, ok: boolean) => {
  if (!ok) fails.push(name);
};
const cls = (fn: () => unknown): string => {
  try {
    fn();
    return "";
  } catch (e) {
    if (!(e instanceof DeviceError)) throw e;
    return codeOf(e);
  }
};

const sjv = await load("format/strictjson/testdata/vectors.json");
const s = runStrictJSONVectors(sjv);
for (const f of s.failures) fails.push("strictjson " + f.name + ": " + f.error);
check("strictjson: every vector ran", s.passed === sjv.length);

// Beyond the vectors: things only JavaScript can get wrong.
const obj = (key: string, val: sj.Value): sj.Value => ({ kind: "object", obj: [{ key, val }] });
check("lone surrogate in a string input", cls(() => sj.parse('{"a":"\ud800"}')) === "syntax");
check("U+212A in a string input", cls(() => sj.parse('{"\u212aind":1}')) === "syntax");
check("string and bytes input agree", sj.encode(sj.parse('{"a":[1,"b"]}')) === sj.encode(sj.parse(new TextEncoder().encode('{"a":[1,"b"]}'))));
check("encode refuses a negative int", cls(() => sj.encode(obj("a", { kind: "int", int: -1 }))) === "range");
check("encode refuses a fraction", cls(() => sj.encode(obj("a", { kind: "int", int: 1.5 }))) === "range");
check("encode refuses 2^32", cls(() => sj.encode(obj("a", { kind: "int", int: 2 ** 32 }))) === "range");
check("encode refuses non-ASCII", cls(() => sj.encode(obj("\u212a", { kind: "int", int: 1 }))) === "syntax");
check("encode refuses a top-level array", cls(() => sj.encode({ kind: "array", arr: [] })) === "syntax");
check("encode refuses null", cls(() => sj.encode(obj("a", null as unknown as sj.Value))) === "syntax");
check("object() refuses a non-object", cls(() => sj.object({ kind: "array", arr: [] })) === "type");
for (let x = 0; x < 65536; x++) {
  for (const b of [new Uint8Array([x & 255]), new Uint8Array([x & 255, x >> 8])]) {
    const d = sj.decodeBase64(sj.encodeBase64(b));
    if (d.length !== b.length || d.some((v, i) => v !== b[i])) fails.push("base64 round trip " + x);
  }
}
let accepted = 0;
const A = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
for (const c1 of A) for (const c2 of A) for (const c3 of A) if (cls(() => sj.decodeBase64(c1 + c2 + c3 + "=")) === "") accepted++;
check("exactly 65536 three-symbol texts decode", accepted === 65536);
const secret = "c2VjcmV0a2V5";
for (const inp of ['{"k":"' + secret + '\\n"}', '{"k":"' + secret + '\t"}', '{"k":"' + secret]) {
  try {
    sj.parse(inp);
    fails.push("parsed " + inp);
  } catch (e) {
    check("message echoes the value", !(e as Error).message.includes("c2Vj"));
  }
}
try {
  sj.object(sj.parse('{"k":"' + secret + 'Q="}'), "k").bytes("k", 1, 64);
  fails.push("bytes accepted");
} catch (e) {
  check("bytes message echoes the value", codeOf(e) === "base64" && !(e as Error).message.includes("c2Vj"));
}

const ucv = await load("escrow/unlockcode/testdata/vectors.json");
const u = await runUnlockCodeVectors(ucv);
for (const f of u.failures) fails.push("unlockcode " + f);
check("unlockcode: checks ran", u.passed > ucv.codes.length * 4);
for (const [typed, want] of [["3K2M-9QXD-4HRT-W6NP", "mistyped"], ["3K2M*9QXD-4HRT-W6PN", "not-a-code"]] as const) {
  try {
    parseCode(typed);
    fails.push(typed + " parsed");
  } catch (e) {
    check(typed + ": " + want, codeOf(e) === want);
    check("the error repeats the input", !(e as Error).message.includes("3K2M") && !(e as Error).message.includes("W6"));
  }
}

const dv = await load("escrow/device/testdata/vectors.json");
const d = await runDeviceVectors(dv);
for (const f of d.failures) fails.push("device " + f.name + ": got " + f.got + ", want " + f.want);
const total = Object.keys(dv.gdks).length + dv.positive.length + dv.negative.length + dv.records.length;
check("device: every vector ran", d.passed === total);

// The decoders under mutation, seeded with every input of the vector files.
const seeds: string[] = [];
for (const v of sjv) if (typeof v.input === "string") seeds.push(v.input);
for (const v of dv.positive) seeds.push(v.slot);
for (const v of dv.negative) if (typeof v.input === "string") seeds.push(v.input);
for (const v of dv.records) seeds.push(v.record);
for (const c of ucv.codes) seeds.push(c.typed);
const fz = fuzz(seeds, Number(process.env["FUZZ_ITERATIONS"] ?? "3000"));
for (const f of fz.failures.slice(0, 20)) fails.push("fuzz " + f);
check("fuzz: some mutated inputs decode", fz.decoded > 0);

for (const f of fails) console.error("FAIL " + f);
console.log(`strictjson ${s.passed}/${sjv.length}, unlockcode ${u.passed} checks, device ${d.passed}/${total} (${JSON.stringify(d.counts)}), ` +
  `fuzz ${fz.runs} inputs (${fz.decoded} decodings); ${fails.length} failures`);
process.exit(fails.length ? 1 : 0);
