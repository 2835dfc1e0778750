// Runs escrow/unlockcode/testdata/vectors.json against web/unlockcode.js in
// node (WebCrypto from globalThis.crypto) and exits non-zero on any
// disagreement. Usage: node web/unlockcode_node_test.mjs
import { readFile } from "node:fs/promises";
import { runVectors, parseCode, CodeError } from "./unlockcode.js";

const path = new URL("../escrow/unlockcode/testdata/vectors.json", import.meta.url);
const vectors = JSON.parse(await readFile(path, "utf8"));
const { passed, failures } = await runVectors(vectors);

// Checks beyond the vectors: errors carry a code and never the input.
const extra = [];
const typed = "3K2M-9QXD-4HRT-W6NP";
try {
  parseCode(typed);
  extra.push("a swapped code parsed");
} catch (e) {
  if (!(e instanceof CodeError) || e.code !== "mistyped") extra.push("swapped: " + e);
  if (e.message.includes("W6NP") || e.message.includes("3K2M")) extra.push("the error repeats the input");
}
try {
  parseCode("3K2M*9QXD-4HRT-W6PN");
  extra.push("an asterisk parsed");
} catch (e) {
  if (e.code !== "not-a-code") extra.push("asterisk: " + e);
  if (e.message.includes("3K2M")) extra.push("the error repeats the input");
}

const all = failures.concat(extra);
for (const f of all) console.error("FAIL " + f);
console.log(`${passed} checks passed, ${all.length} failed (${vectors.codes.length} codes, ` +
  `${vectors.typings.length} typings, ${vectors.invalid.length} invalid)`);
process.exit(all.length || passed === 0 ? 1 : 0);
