// Every failure of this package is a DeviceError with a stable code. The
// message is fit to show a user; the detail (field names, sizes, offsets)
// is for logs and never holds a secret, a key or typed text.

/** The error classes of docs/FORMAT.md ("Error classes"), shared with the Go decoders and the vector files. */
export const FORMAT_CODES = [
  "size", "syntax", "range", "duplicate-key", "unknown-key", "missing-key", "type", "base64",
  "version", "kind", "suite", "id", "point", "mismatch", "binding", "commitment", "untrusted",
  "wrong-key", "wrong-secret", "wrong-code", "damaged", "not-a-code", "mistyped", "record",
] as const;

/** Codes of the device layer (docs/DEVICE.md, "Errors"). */
export const DEVICE_CODES = ["locked", "stale", "offline", "limit", "not-enrolled", "no-prf", "storage", "no-escrow", "has-escrow"] as const;

export type FormatCode = (typeof FORMAT_CODES)[number];
export type DeviceCode = (typeof DEVICE_CODES)[number];
export type ErrorCode = FormatCode | DeviceCode;

export const MESSAGES: Readonly<Record<ErrorCode, string>> = {
  "size": "The data is larger than the format allows.",
  "syntax": "The key bundle is not in the format's JSON.",
  "range": "A value of the key bundle is out of range.",
  "duplicate-key": "A field of the key bundle appears twice.",
  "unknown-key": "The key bundle has a field this device does not know.",
  "missing-key": "A field of the key bundle is missing.",
  "type": "A field of the key bundle has the wrong type.",
  "base64": "A byte string of the key bundle is not canonical base64.",
  "version": "The key bundle is not format version 2.",
  "kind": "The slot is of a kind this device does not know.",
  "suite": "The slot's suite is not allowed for its kind.",
  "id": "An id of the key bundle is not printable ASCII.",
  "point": "The slot's ephemeral key is not a P-256 point.",
  "mismatch": "The slots of the key bundle disagree with each other.",
  "binding": "This slot belongs to another group, recipient or kind, or was altered.",
  "commitment": "The key in this slot is not the group key it claims to be.",
  "untrusted": "This slot holds a group key this device does not trust.",
  "wrong-key": "This slot does not open with this device's key.",
  "wrong-secret": "Wrong password or passkey.",
  "wrong-code": "This code is valid, but it does not open this device's data: it belongs to another user or to an older set of codes.",
  "damaged": "The code is right, but this device's copy of the key is damaged or was tampered with. Sync the device and try again.",
  "not-a-code": "That is not an unlock code: a code has 16 letters and digits, in four groups of four.",
  "mistyped": "A character is wrong or two are swapped. Check the code with support and type it again.",
  "record": "This record was altered or does not belong here; it cannot be read.",
  "locked": "The data is locked. Unlock it with your password or passkey first.",
  "stale": "A newer key of this group has arrived. Unlock again to save your changes.",
  "offline": "This needs a connection. It will be done when you are back online.",
  "limit": "The key bundle asks for more work than this device allows; it was refused.",
  "not-enrolled": "This device has no key for that yet. Sync it or set it up again.",
  "no-prf": "This passkey or browser cannot unlock data (no PRF support). Use your password.",
  "storage": "The browser's storage failed. Free some space or reload the page.",
  "no-escrow": "The sign-up is not finished: this account's recovery key is not set yet. Go online to finish it.",
  "has-escrow": "This account's recovery key is already set.",
};

export class DeviceError extends Error {
  /** The stable code: compare this, never the message. */
  readonly code: ErrorCode;
  /** What failed, for logs: positions, sizes and field names only. */
  readonly detail: string;

  constructor(code: ErrorCode, detail = "", options?: { cause?: unknown }) {
    super(MESSAGES[code] + (detail ? " (" + detail + ")" : ""), options);
    this.name = "DeviceError";
    this.code = code;
    this.detail = detail;
  }
}

export function fail(code: ErrorCode, detail = ""): never {
  throw new DeviceError(code, detail);
}

/** codeOf returns the code of an error this package threw, or "". */
export function codeOf(e: unknown): ErrorCode | "" {
  return e instanceof DeviceError ? e.code : "";
}
