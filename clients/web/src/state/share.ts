// What may cross between tabs. A key crosses as a non-extractable CryptoKey
// (structured clone keeps it non-extractable), never as bytes: a message on
// a BroadcastChannel is one step from a log or a devtools dump, and bytes
// there would outlive the tab's memory.

import { StateError } from "./errors.js";

/** Turns a handle into what is posted to other tabs, and back. */
export interface HandleCodec<H> {
  /** The form posted: plain data and non-extractable CryptoKeys only (checked by assertShareable). */
  toWire(handle: H): unknown;
  fromWire(wire: unknown): H | Promise<H>;
}

const MAX_DEPTH = 8;

/**
 * Throws StateError "unshareable" unless value is made only of plain data
 * without bytes (strings, numbers, booleans, null, arrays, plain objects,
 * Maps) and CryptoKeys that are not extractable. Strings are allowed
 * because ids and versions are strings; the codec is trusted not to put a
 * key in one, and this check exists to catch the easy mistake of posting
 * raw bytes or an extractable key.
 */
export function assertShareable(value: unknown, path = "value", depth = 0): void {
  const refuse = (why: string): never => {
    throw new StateError("unshareable", { detail: path + ": " + why });
  };
  if (depth > MAX_DEPTH) refuse("nested too deep");
  if (value === null || value === undefined) return;
  switch (typeof value) {
    case "string":
    case "number":
    case "boolean":
      return;
    case "object":
      break;
    default:
      refuse(typeof value);
  }
  const C = (globalThis as { CryptoKey?: abstract new (...a: never[]) => CryptoKey }).CryptoKey;
  if (C !== undefined && value instanceof C) {
    if ((value as CryptoKey).extractable) refuse("an extractable CryptoKey");
    return;
  }
  if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) refuse("raw bytes");
  if (typeof SharedArrayBuffer !== "undefined" && value instanceof SharedArrayBuffer) refuse("raw bytes");
  if (Array.isArray(value)) {
    value.forEach((v, i) => assertShareable(v, path + "[" + i + "]", depth + 1));
    return;
  }
  if (value instanceof Map) {
    for (const [k, v] of value) {
      assertShareable(k, path + ".key", depth + 1);
      assertShareable(v, path + "." + String(k), depth + 1);
    }
    return;
  }
  const proto = Object.getPrototypeOf(value) as unknown;
  if (proto !== Object.prototype && proto !== null) refuse("not plain data");
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) assertShareable(v, path + "." + k, depth + 1);
}
