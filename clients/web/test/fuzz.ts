// A mutation fuzzer of the package's decoders over the vector files'
// inputs (deterministic: a seeded generator, so a failure reproduces).
// Every input either decodes, and then re-encodes to a text that decodes
// to the same thing, or fails with a DeviceError: never another exception,
// never a hang. FUZZ_ITERATIONS sets the count (`npm test` runs 3000).

import { DeviceError } from "../src/errors.js";
import { encodeRecord, encodeSlot, parseBundle, parseRecord, parseSlot } from "../src/format.js";
import * as sj from "../src/strictjson.js";
import { parseCode } from "../src/unlockcode.js";

// xorshift32: reproducible, no dependency.
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

const PIECES = ['"', "\\", "{", "}", "[", "]", ",", ":", "0", "4294967296", "=", "==", " ", '"v":2', '"kind":"chain"', "\u212a", "A"];

function mutate(src: string, r: () => number): string {
  let s = src;
  const n = 1 + (r() % 4);
  for (let k = 0; k < n; k++) {
    const at = s.length ? r() % s.length : 0;
    switch (r() % 5) {
      case 0: // flip a byte
        s = s.slice(0, at) + String.fromCharCode((s.charCodeAt(at) ^ (1 << (r() % 7))) & 0x7f) + s.slice(at + 1);
        break;
      case 1: // delete a run
        s = s.slice(0, at) + s.slice(at + 1 + (r() % 8));
        break;
      case 2: // insert a piece
        s = s.slice(0, at) + PIECES[r() % PIECES.length] + s.slice(at);
        break;
      case 3: // duplicate a run
        s = s.slice(0, at) + s.slice(at, at + 1 + (r() % 32)) + s.slice(at);
        break;
      default: // splice in another seed's tail
        s = s.slice(0, at) + src.slice(r() % (src.length || 1));
    }
  }
  return s;
}

export interface FuzzResult {
  runs: number;
  decoded: number;
  failures: string[];
}

export function fuzz(seeds: string[], iterations: number, seed = 1): FuzzResult {
  const r = rng(seed);
  const failures: string[] = [];
  let decoded = 0;
  const guard = (what: string, input: string, fn: () => void) => {
    try {
      fn();
      decoded++;
    } catch (e) {
      if (!(e instanceof DeviceError)) failures.push(what + ": " + (e instanceof Error ? e.message : String(e)) + " on " + JSON.stringify(input.slice(0, 200)));
    }
  };
  for (let i = 0; i < iterations; i++) {
    const input = mutate(seeds[r() % seeds.length]!, r);
    guard("strictjson", input, () => {
      const v = sj.parse(input);
      const again = sj.encode(v);
      if (sj.encode(sj.parse(again)) !== again) throw new Error("encode(parse(encode(v))) differs");
    });
    guard("slot", input, () => {
      const text = encodeSlot(parseSlot(input));
      if (encodeSlot(parseSlot(text)) !== text) throw new Error("a slot re-encodes differently");
    });
    guard("bundle", input, () => {
      parseBundle(input);
    });
    guard("record", input, () => {
      const text = encodeRecord(parseRecord(input));
      if (encodeRecord(parseRecord(text)) !== text) throw new Error("a record re-encodes differently");
    });
    guard("code", input, () => {
      parseCode(input.slice(0, 40));
    });
  }
  return { runs: iterations, decoded, failures };
}
