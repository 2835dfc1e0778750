// Byte helpers. Bytes is a Uint8Array over a plain ArrayBuffer, which is
// what WebCrypto takes as a BufferSource.

export type Bytes = Uint8Array<ArrayBuffer>;

const te = new TextEncoder();

export function utf8(s: string): Bytes {
  return te.encode(s) as Bytes;
}

export function hex(b: Uint8Array | ArrayBuffer): string {
  return Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
}

export function unhex(s: string): Bytes {
  if (s.length % 2 !== 0 || /[^0-9a-f]/i.test(s)) throw new TypeError("not hex");
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substring(2 * i, 2 * i + 2), 16);
  return out;
}

export function concat(...parts: Uint8Array[]): Bytes {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export const u8 = (n: number): Bytes => new Uint8Array([n & 255]);
export const u16 = (n: number): Bytes => new Uint8Array([(n >>> 8) & 255, n & 255]);
export const u32 = (n: number): Bytes => new Uint8Array([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);

export function lp8(b: Uint8Array): Bytes {
  if (b.length > 255) throw new RangeError("field longer than 255 bytes");
  return concat(u8(b.length), b);
}

export function lp16(b: Uint8Array): Bytes {
  if (b.length > 65535) throw new RangeError("field longer than 65535 bytes");
  return concat(u16(b.length), b);
}

/** equal compares in time independent of where the inputs differ. */
export function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}

export function random(n: number): Bytes {
  return globalThis.crypto.getRandomValues(new Uint8Array(n));
}

/** copy returns bytes over a fresh ArrayBuffer (what WebCrypto accepts). */
export function copy(b: Uint8Array | ArrayBuffer): Bytes {
  return new Uint8Array(b instanceof ArrayBuffer ? b.slice(0) : b);
}
