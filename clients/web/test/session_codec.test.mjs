// The codecs DeviceSession posts keys with: what another tab may send is
// outside input, read strictly. Table vectors (accepted and refused wire
// forms), then a randomized run over mutated wire forms with a fixed seed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadState } from "../scripts/load-state.mjs";

const { groupCodec, deviceCodec, assertShareable } = await loadState("test/session_entry.ts");
const subtle = globalThis.crypto.subtle;

const aes = (extractable) => subtle.generateKey({ name: "AES-GCM", length: 256 }, extractable, ["encrypt", "decrypt"]);
const k1 = await aes(false);
const k2 = await aes(false);
const open = await aes(true);
const hmac = await subtle.generateKey({ name: "HMAC", hash: "SHA-256" }, false, ["sign"]);

test("groupCodec: the wire form of a handle is shareable and reads back", async () => {
  const h = { group: "g", version: 2, keys: new Map([[1, k1], [2, k2]]) };
  const wire = groupCodec.toWire(h);
  assertShareable(wire);
  const back = await groupCodec.fromWire(structuredClone(wire));
  assert.equal(back.group, "g");
  assert.equal(back.version, 2);
  assert.deepEqual([...back.keys.keys()], [1, 2]);
  assert.ok([...back.keys.values()].every((k) => k instanceof CryptoKey && !k.extractable));
  assert.equal(back.ring, undefined, "no GDK crosses");
});

test("groupCodec: a handle holding an extractable key is refused before posting", () => {
  const wire = groupCodec.toWire({ group: "g", version: 1, keys: new Map([[1, open]]) });
  assert.throws(() => assertShareable(wire), { code: "unshareable" });
});

const refused = {
  "null": null,
  "a string": "g",
  "no group": { version: 1, keys: new Map([[1, k1]]) },
  "empty group": { group: "", version: 1, keys: new Map([[1, k1]]) },
  "long group": { group: "g".repeat(129), version: 1, keys: new Map([[1, k1]]) },
  "version as string": { group: "g", version: "1", keys: new Map([[1, k1]]) },
  "version 0": { group: "g", version: 0, keys: new Map([[0, k1]]) },
  "version fraction": { group: "g", version: 1.5, keys: new Map([[1.5, k1]]) },
  "version above u32": { group: "g", version: 2 ** 32, keys: new Map([[2 ** 32, k1]]) },
  "keys as object": { group: "g", version: 1, keys: { 1: k1 } },
  "keys as array": { group: "g", version: 1, keys: [[1, k1]] },
  "no key of the version": { group: "g", version: 2, keys: new Map([[1, k1]]) },
  "empty map": { group: "g", version: 1, keys: new Map() },
  "map key as string": { group: "g", version: 1, keys: new Map([["1", k1]]) },
  "an extractable key": { group: "g", version: 1, keys: new Map([[1, open]]) },
  "an HMAC key": { group: "g", version: 1, keys: new Map([[1, hmac]]) },
  "raw bytes": { group: "g", version: 1, keys: new Map([[1, new Uint8Array(32)]]) },
  "a plain object as key": { group: "g", version: 1, keys: new Map([[1, { type: "secret" }]]) },
  "too many versions": { group: "g", version: 1, keys: new Map(Array.from({ length: 4097 }, (_, i) => [i + 1, k1])) },
};

test("groupCodec: wire forms that are not a group's record keys are refused", async () => {
  for (const [name, wire] of Object.entries(refused)) {
    await assert.rejects(async () => groupCodec.fromWire(wire), { code: "locked" }, name);
  }
});

test("deviceCodec: the user id alone crosses", async () => {
  const wire = deviceCodec.toWire({ user: "u", keys: { secret: true } });
  assert.deepEqual(wire, { user: "u" });
  assertShareable(wire);
  assert.deepEqual(await deviceCodec.fromWire({ user: "u", keys: { a: 1 } }), { user: "u" });
  assert.deepEqual(await deviceCodec.fromWire({ user: null }), { user: null });
  for (const w of [null, {}, { user: 5 }, { user: ["u"] }, "u"]) {
    await assert.rejects(async () => deviceCodec.fromWire(w), { code: "locked" }, JSON.stringify(w));
  }
});

test("groupCodec: mutated wire forms are read or refused, never half-read", async () => {
  let seed = 0x5eed;
  const rnd = (n) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
  const values = [null, undefined, 0, 1, 2, -1, 1.5, "1", "g", "", [], {}, new Map(), k1, open, hmac, new Uint8Array(4), 2 ** 32];
  let read = 0;
  for (let i = 0; i < 2000; i++) {
    const keys = new Map([[1, k1], [2, k2]]);
    const w = { group: "g", version: 2, keys };
    switch (rnd(4)) {
      case 0: w.group = values[rnd(values.length)]; break;
      case 1: w.version = values[rnd(values.length)]; break;
      case 2: keys.set(values[rnd(values.length)], values[rnd(values.length)]); break;
      default: w.keys = values[rnd(values.length)];
    }
    try {
      const h = await groupCodec.fromWire(w);
      read++;
      assert.ok(typeof h.group === "string" && h.keys.has(h.version));
      for (const [v, k] of h.keys) assert.ok(Number.isSafeInteger(v) && v >= 1 && k instanceof CryptoKey && !k.extractable && k.algorithm.name === "AES-GCM");
    } catch (e) {
      assert.equal(e.code, "locked", String(e));
    }
  }
  assert.ok(read > 0 && read < 2000, read + " of 2000 read");
});
