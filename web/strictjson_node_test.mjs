// Runs format/strictjson/testdata/vectors.json against web/strictjson.js,
// the same vectors format/strictjson's Go test runs: the two decoders of
// the key bundle must agree on every case. Usage: node web/strictjson_node_test.mjs
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { runVectors, parse, encode, decodeBase64, encodeBase64, object, classOf, StrictJSONError } from "./strictjson.js";

const file = fileURLToPath(new URL("../format/strictjson/testdata/vectors.json", import.meta.url));
const vectors = JSON.parse(await readFile(file, "utf8"));
const { passed, failures } = runVectors(vectors);
for (const f of failures) console.error("FAIL " + f.name + ": " + f.error);

// Checks beyond the vectors: things only JavaScript can get wrong.
const extra = [];
function check(name, ok) {
  if (!ok) extra.push(name);
}
function cls(fn) {
  try {
    fn();
    return "";
  } catch (e) {
    if (!(e instanceof StrictJSONError)) throw e;
    return classOf(e);
  }
}
// A JS string is taken as UTF-8: a lone surrogate becomes U+FFFD's bytes.
check("lone surrogate in a string input", cls(() => parse('{"a":"\ud800"}')) === "syntax");
check("U+212A in a string input", cls(() => parse('{"\u212aind":1}')) === "syntax");
check("non-bytes input", cls(() => parse([0x7b, 0x7d])) === "syntax");
check("string and bytes input agree", encode(parse('{"a":[1,"b"]}')) === encode(parse(new TextEncoder().encode('{"a":[1,"b"]}'))));
check("encode refuses a negative int", cls(() => encode({ kind: "object", obj: [{ key: "a", val: { kind: "int", int: -1 } }] })) === "range");
check("encode refuses a fraction", cls(() => encode({ kind: "object", obj: [{ key: "a", val: { kind: "int", int: 1.5 } }] })) === "range");
check("encode refuses 2^32", cls(() => encode({ kind: "object", obj: [{ key: "a", val: { kind: "int", int: 2 ** 32 } }] })) === "range");
check("encode refuses non-ASCII", cls(() => encode({ kind: "object", obj: [{ key: "\u212a", val: { kind: "int", int: 1 } }] })) === "syntax");
check("encode refuses a duplicate key", cls(() => encode({ kind: "object", obj: [{ key: "a", val: { kind: "int", int: 1 } }, { key: "a", val: { kind: "int", int: 2 } }] })) === "duplicate-key");
check("encode refuses a top-level array", cls(() => encode({ kind: "array", arr: [] })) === "syntax");
check("encode refuses null", cls(() => encode({ kind: "object", obj: [{ key: "a", val: null }] })) === "syntax");
check("decodeBase64 refuses non-strings", cls(() => decodeBase64(null)) === "base64");
check("object() refuses a non-object", cls(() => object({ kind: "array", arr: [] })) === "type");
// Every 1- and 2-byte value round-trips through base64, and the texts that
// differ only in unused bits are refused.
for (let x = 0; x < 65536; x++) {
  for (const b of [new Uint8Array([x & 255]), new Uint8Array([x & 255, x >> 8])]) {
    const s = encodeBase64(b);
    const d = decodeBase64(s);
    if (d.length !== b.length || d.some((v, i) => v !== b[i])) extra.push("base64 round trip " + s);
  }
}
let accepted = 0;
const A = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
for (const c1 of A) for (const c2 of A) for (const c3 of A) {
  if (cls(() => decodeBase64(c1 + c2 + c3 + "=")) === "") accepted++;
}
check("exactly 65536 three-symbol texts decode", accepted === 65536);
// Messages never carry a value's text.
const secret = "c2VjcmV0a2V5";
for (const inp of ['{"k":"' + secret + '\\n"}', '{"k":"' + secret + '\t"}', '{"k":"' + secret]) {
  try {
    parse(inp);
    extra.push("parsed " + inp);
  } catch (e) {
    check("message echoes the value: " + e.message, !e.message.includes("c2Vj"));
  }
}
try {
  object(parse('{"k":"' + secret + 'Q="}'), "k").bytes("k", 1, 64);
  extra.push("bytes accepted");
} catch (e) {
  check("bytes message echoes the value: " + e.message, e.cls === "base64" && !e.message.includes("c2Vj"));
}
for (const name of extra) console.error("FAIL " + name);

console.log(`${passed}/${vectors.length} vectors passed, ${extra.length} other failures`);
process.exit(failures.length === 0 && extra.length === 0 && passed === vectors.length ? 0 : 1);
