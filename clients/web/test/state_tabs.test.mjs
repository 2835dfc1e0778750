// readMessage: the strict reading of what other tabs post. Table vectors,
// then a randomized run over mutated messages (a fuzz loop with a fixed
// seed, so a failure reproduces).
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadState } from "../scripts/load-state.mjs";

const { readMessage } = await loadState("src/state/tabs.ts");

const ok = [
  [{ v: 1, t: "hello", from: "a" }, { v: 1, t: "hello", from: "a" }],
  [{ v: 1, t: "logout", from: "a", extra: 1 }, { v: 1, t: "logout", from: "a" }],
  [{ v: 1, t: "activity", from: "a" }, { v: 1, t: "activity", from: "a" }],
  [{ v: 1, t: "locked", from: "a", scope: "device" }, { v: 1, t: "locked", from: "a", scope: "device" }],
  [{ v: 1, t: "unlocked", from: "a", scope: "group:g" }, { v: 1, t: "unlocked", from: "a", scope: "group:g" }],
  [{ v: 1, t: "unlocked", from: "a", scope: "device", keys: { k: 1 } }, { v: 1, t: "unlocked", from: "a", scope: "device", keys: { k: 1 } }],
  [{ v: 1, t: "version", from: "a", group: "g", version: 1 }, { v: 1, t: "version", from: "a", group: "g", version: 1 }],
  [{ v: 1, t: "version", from: "a", group: "g", version: Number.MAX_SAFE_INTEGER }, { v: 1, t: "version", from: "a", group: "g", version: Number.MAX_SAFE_INTEGER }],
];

const bad = {
  "null": null,
  "number": 1,
  "string": "hello",
  "array": [1, "hello", "a"],
  "no version": { t: "hello", from: "a" },
  "version 2": { v: 2, t: "hello", from: "a" },
  "v as string": { v: "1", t: "hello", from: "a" },
  "no from": { v: 1, t: "hello" },
  "empty from": { v: 1, t: "hello", from: "" },
  "long from": { v: 1, t: "hello", from: "x".repeat(513) },
  "from not a string": { v: 1, t: "hello", from: 7 },
  "unknown type": { v: 1, t: "wipe", from: "a" },
  "locked without scope": { v: 1, t: "locked", from: "a" },
  "locked with numeric scope": { v: 1, t: "locked", from: "a", scope: 1 },
  "unlocked without scope": { v: 1, t: "unlocked", from: "a", keys: {} },
  "version 0": { v: 1, t: "version", from: "a", group: "g", version: 0 },
  "negative version": { v: 1, t: "version", from: "a", group: "g", version: -1 },
  "fractional version": { v: 1, t: "version", from: "a", group: "g", version: 1.5 },
  "unsafe version": { v: 1, t: "version", from: "a", group: "g", version: 2 ** 53 },
  "version as string": { v: 1, t: "version", from: "a", group: "g", version: "2" },
  "version NaN": { v: 1, t: "version", from: "a", group: "g", version: NaN },
  "version without group": { v: 1, t: "version", from: "a", version: 2 },
};

test("readMessage: valid messages, read to their exact shape", () => {
  for (const [input, want] of ok) assert.deepEqual(readMessage(input), want, JSON.stringify(input));
});

test("readMessage: every other shape is refused", () => {
  for (const [name, input] of Object.entries(bad)) assert.equal(readMessage(input), undefined, name);
});

// A small PRNG (mulberry32) so that the run is the same every time.
function rng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test("readMessage: mutated messages never throw, and what it accepts reads back the same", () => {
  const r = rng(20261201);
  const values = [undefined, null, 0, 1, -1, 1.5, 2 ** 53, NaN, "", "a", "x".repeat(600), "device", "group:g", true, {}, [], { v: 1 }, new Uint8Array(2)];
  const keys = ["v", "t", "from", "scope", "keys", "group", "version", "__proto__", "constructor"];
  const types = ["hello", "unlocked", "locked", "logout", "activity", "version", "nope", ""];
  const pick = (a) => a[Math.floor(r() * a.length)];
  let accepted = 0;
  for (let i = 0; i < 20000; i++) {
    const base = structuredClone(pick(ok)[0]);
    const n = 1 + Math.floor(r() * 3);
    for (let j = 0; j < n; j++) {
      const k = pick(keys);
      const roll = r();
      if (roll < 0.3) delete base[k];
      else if (roll < 0.5 && k === "t") base.t = pick(types);
      else base[k] = pick(values);
    }
    const m = readMessage(base);
    if (m === undefined) continue;
    accepted++;
    assert.deepEqual(readMessage(m), m, JSON.stringify(base));
    assert.equal(m.v, 1);
    assert.ok(typeof m.from === "string" && m.from.length > 0 && m.from.length <= 512);
    if (m.t === "version") assert.ok(Number.isSafeInteger(m.version) && m.version >= 1);
    if (m.t === "locked" || m.t === "unlocked") assert.equal(typeof m.scope, "string");
  }
  assert.ok(accepted > 1000, "the run reaches accepted messages too: " + accepted);
});
