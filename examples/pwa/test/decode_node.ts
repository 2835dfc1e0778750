// Run by decode_test.go in node: the decoders of the backend's answers
// against testdata/responses.json (each valid vector decodes, each invalid
// one fails naming its field), then a seeded mutation fuzzer: a mutated
// answer either decodes to values within the API's bounds or is refused
// with a ResponseError, never any other exception. Prints a JSON summary.
import { readFileSync } from "node:fs";
import { ResponseError, decodeApproval, decodeEnrolRequest, decodeGroupView, decodeGroups, decodeNotifications, decodeRecord, decodeRecords, parseJSON, parsePasted } from "../src/decode.js";

const decoders: Record<string, (v: unknown) => unknown> = {
  group: decodeGroupView, groups: decodeGroups, record: decodeRecord, records: decodeRecords, notifications: decodeNotifications,
  "enrol-request": decodeEnrolRequest, approval: decodeApproval,
};
interface Vector { name: string; decoder: string; body: string; error?: string }
const { valid, invalid } = JSON.parse(readFileSync(process.argv[2]!, "utf8")) as { valid: Vector[]; invalid: Vector[] };
const failures: string[] = [];
// The pairing texts a user pastes are read by parsePasted, and their refusals name "the pasted text".
const isPasted = (v: Vector) => v.decoder === "enrol-request" || v.decoder === "approval";
const run = (v: Vector) => decoders[v.decoder]!(isPasted(v) ? parsePasted(v.body) : parseJSON(v.body));

for (const v of valid) {
  try {
    run(v);
  } catch (e) {
    failures.push("valid " + v.name + ": " + String(e));
  }
}
for (const v of invalid) {
  try {
    run(v);
    failures.push("invalid " + v.name + ": accepted");
  } catch (e) {
    if (!(e instanceof ResponseError)) failures.push("invalid " + v.name + ": " + String(e));
    else if (!e.message.startsWith((isPasted(v) ? "the pasted text: " : "the backend's answer: ") + v.error + ":")) failures.push("invalid " + v.name + ": " + e.message + " (want field " + v.error + ")");
  }
}

// A small seeded PRNG (mulberry32), so a failure repeats.
const seed0 = Number(process.env.FUZZ_SEED ?? 15);
let seed = seed0;
const rnd = () => {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const pick = <T>(a: T[]) => a[Math.floor(rnd() * a.length)]!;
const junk = ['"', "{", "}", "[", "]", ",", ":", "-1", "1e99", "null", "true", '"x"', "\\u0000", "=", "A", "/", "0.5", "4294967296"];
const mutate = (s: string) => {
  const i = Math.floor(rnd() * (s.length + 1));
  switch (Math.floor(rnd() * 3)) {
    case 0: return s.slice(0, i) + s.slice(i + 1 + Math.floor(rnd() * 8));
    case 1: return s.slice(0, i) + pick(junk) + s.slice(i);
    default: return s.slice(0, i) + String.fromCharCode(32 + Math.floor(rnd() * 95)) + s.slice(i + 1);
  }
};
const iterations = Number(process.env.FUZZ_ITERATIONS ?? 20000);
let accepted = 0, refused = 0;
for (let n = 0; n < iterations && failures.length < 10; n++) {
  const v = pick(valid);
  let body = v.body;
  for (let k = 1 + Math.floor(rnd() * 3); k > 0; k--) body = mutate(body);
  try {
    const out = run({ ...v, body }) as { commitments?: Uint8Array[]; sign_key?: Uint8Array; wrap_key?: Uint8Array; member_key?: Uint8Array; approval?: Uint8Array };
    for (const c of out.commitments ?? []) if (c.length !== 32) throw new Error("a commitment of " + c.length + " bytes accepted");
    for (const k of [out.sign_key, out.wrap_key, out.member_key]) if (k && k.length !== 91) throw new Error("a public key of " + k.length + " bytes accepted");
    if (out.approval && out.approval.length !== 64) throw new Error("an approval of " + out.approval.length + " bytes accepted");
    accepted++;
  } catch (e) {
    if (e instanceof ResponseError) refused++;
    else failures.push("fuzz (FUZZ_SEED=" + seed0 + ", " + v.decoder + "): " + JSON.stringify(body) + ": " + String(e));
  }
}
console.log(JSON.stringify({ valid: valid.length, invalid: invalid.length, accepted, refused, failures }));
