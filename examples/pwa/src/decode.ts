// Decoders of the sync backend's answers. The backend is outside the
// device's trust: bundles and records are checked by the SDK's strict
// decoders, and every other field the app uses is checked here, so a
// damaged or hostile answer is a clear error and never a wrong pin.

import { COMMIT_SIZE } from "../../../clients/web/src/format.js";
import { decodeBase64 } from "../../../clients/web/src/strictjson.js";

/** ResponseError: the backend's answer does not have the shape of the API. */
export class ResponseError extends Error {
  override name = "ResponseError";
}

export type Suite = "ecdh-p256" | "rsa-oaep-sha1" | "rsa-oaep-sha256";
const SUITES: readonly string[] = ["ecdh-p256", "rsa-oaep-sha1", "rsa-oaep-sha256"];
const MAX_ID = 128;

export interface GroupView {
  group: string;
  version: number;
  owner: string;
  surrogates: string[];
  gdk_version: number;
  /** The commitments of GDK versions 1, 2, …, decoded. */
  commitments: Uint8Array[];
  escrow_key: { version: number; suite: Suite; public_key: Uint8Array };
  epoch: number;
  /** The bundle's text, if the group has one. */
  bundle?: string;
}

export interface RecordView {
  id: string;
  version: number;
  record: string;
}

export interface Notification {
  sequence: number;
  kind: string;
  group: string;
  epoch: number;
  index: number;
  ticket?: string;
  time: string;
}

function bad(field: string, why: string): never {
  throw new ResponseError("the backend's answer: " + field + ": " + why);
}

function obj(v: unknown, field: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) bad(field, "not an object");
  return v as Record<string, unknown>;
}

function arr(v: unknown, field: string): unknown[] {
  if (!Array.isArray(v)) bad(field, "not a list");
  return v;
}

function id(v: unknown, field: string): string {
  if (typeof v !== "string" || v.length === 0 || v.length > MAX_ID || !/^[\x21-\x7e]+$/.test(v)) bad(field, "not an id (1 to 128 printable ASCII characters)");
  return v;
}

function uint(v: unknown, field: string, max = 2 ** 32 - 1): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0 || v > max) bad(field, "not an unsigned integer up to " + max);
  return v;
}

function bytes(v: unknown, field: string): Uint8Array {
  try {
    return decodeBase64(v as string);
  } catch {
    bad(field, "not canonical base64");
  }
}

function text(v: unknown, field: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes(v, field));
  } catch (e) {
    if (e instanceof ResponseError) throw e;
    bad(field, "not UTF-8");
  }
}

/** parseJSON parses an answer's body; an empty body is an empty object. */
export function parseJSON(body: string): unknown {
  if (body === "") return {};
  try {
    return JSON.parse(body) as unknown;
  } catch {
    bad("body", "not JSON");
  }
}

export function decodeGroupView(v: unknown): GroupView {
  const o = obj(v, "group");
  const ek = obj(o.escrow_key, "escrow_key");
  if (typeof ek.suite !== "string" || !SUITES.includes(ek.suite)) bad("escrow_key.suite", "not a suite");
  const commitments = arr(o.commitments, "commitments").map((c, i) => {
    const b = bytes(c, "commitments[" + i + "]");
    if (b.length !== COMMIT_SIZE) bad("commitments[" + i + "]", "not " + COMMIT_SIZE + " bytes");
    return b;
  });
  const out: GroupView = {
    group: id(o.group, "group"),
    version: uint(o.version, "version", Number.MAX_SAFE_INTEGER),
    owner: id(o.owner, "owner"),
    surrogates: arr(o.surrogates, "surrogates").map((s, i) => id(s, "surrogates[" + i + "]")),
    gdk_version: uint(o.gdk_version, "gdk_version"),
    commitments,
    escrow_key: { version: uint(ek.version, "escrow_key.version"), suite: ek.suite as Suite, public_key: bytes(ek.public_key, "escrow_key.public_key") },
    epoch: uint(o.epoch, "epoch"),
  };
  if (o.bundle !== undefined && o.bundle !== null) out.bundle = text(o.bundle, "bundle");
  return out;
}

export function decodeGroups(v: unknown): string[] {
  return arr(obj(v, "answer").groups, "groups").map((g, i) => id(g, "groups[" + i + "]"));
}

export function decodeRecord(v: unknown, field = "record"): RecordView {
  const o = obj(v, field);
  return { id: id(o.id, field + ".id"), version: uint(o.version, field + ".version", Number.MAX_SAFE_INTEGER), record: text(o.record, field + ".record") };
}

export function decodeRecords(v: unknown): RecordView[] {
  return arr(obj(v, "answer").records, "records").map((r, i) => decodeRecord(r, "records[" + i + "]"));
}

export function decodeNotifications(v: unknown): Notification[] {
  return arr(obj(v, "answer").notifications, "notifications").map((x, i) => {
    const f = "notifications[" + i + "]";
    const o = obj(x, f);
    if (typeof o.kind !== "string" || !/^[a-z_]{1,64}$/.test(o.kind)) bad(f + ".kind", "not a kind");
    if (typeof o.time !== "string" || Number.isNaN(Date.parse(o.time))) bad(f + ".time", "not a time");
    const n: Notification = {
      sequence: uint(o.sequence, f + ".sequence", Number.MAX_SAFE_INTEGER), kind: o.kind, group: id(o.group, f + ".group"),
      epoch: uint(o.epoch, f + ".epoch"), index: uint(o.index, f + ".index"), time: o.time,
    };
    if (o.ticket !== undefined) {
      if (typeof o.ticket !== "string" || !/^[\x20-\x7e]{1,256}$/.test(o.ticket)) bad(f + ".ticket", "not printable ASCII up to 256 characters");
      n.ticket = o.ticket;
    }
    return n;
  });
}

// ---- pairing texts ----------------------------------------------------------------
// A new device of an account and one already enrolled exchange two short
// texts through the user (pasted, or a QR code in a real app): the new
// device's request, and the approval the enrolled device signs. They come
// from outside the app, so they are decoded as strictly as the backend's
// answers, and a refusal says "the pasted text".

/** PastedTextError: a pasted request or approval does not have its shape. */
export class PastedTextError extends ResponseError {
  override name = "PastedTextError";
}

/** A P-256 public key in SPKI form is 91 bytes. */
const SPKI_P256 = 91;

/** EnrolRequest is what a new device shows: the account it joins, its id, and its two public keys. */
export interface EnrolRequest {
  account: string;
  device: string;
  /** The ECDSA P-256 key that signs its requests (SPKI). */
  sign_key: Uint8Array;
  /** The device key of the SDK, ECDH P-256 (SPKI): the backend has GDKs wrapped to it. */
  wrap_key: Uint8Array;
}

/** Approval is what the enrolled device hands back: who approved which device, its signature, and the account's member public key. */
export interface Approval {
  account: string;
  device: string;
  approver: string;
  /** ECDSA P-256 over auth.ApprovalMessage, IEEE P1363 (64 bytes). */
  approval: Uint8Array;
  /** The account's member public key (SPKI): importUser takes it from this channel, not from the backend. */
  member_key: Uint8Array;
}

function pasted<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof ResponseError && !(e instanceof PastedTextError)) throw new PastedTextError(e.message.replace(/^the backend's answer: /, "the pasted text: "));
    throw e;
  }
}

function sized(v: unknown, field: string, n: number): Uint8Array {
  const b = bytes(v, field);
  if (b.length !== n) bad(field, "not " + n + " bytes");
  return b;
}

/** parsePasted parses a pasted text as JSON (surrounding spaces and line breaks allowed). */
export function parsePasted(t: string): unknown {
  return pasted(() => parseJSON(t.trim()));
}

export function decodeEnrolRequest(v: unknown): EnrolRequest {
  return pasted(() => {
    const o = obj(v, "request");
    return { account: id(o.account, "account"), device: id(o.device, "device"), sign_key: sized(o.sign_key, "sign_key", SPKI_P256), wrap_key: sized(o.wrap_key, "wrap_key", SPKI_P256) };
  });
}

export function decodeApproval(v: unknown): Approval {
  return pasted(() => {
    const o = obj(v, "approval");
    return {
      account: id(o.account, "account"), device: id(o.device, "device"), approver: id(o.approver, "approver"),
      approval: sized(o.approval, "approval", 64), member_key: sized(o.member_key, "member_key", SPKI_P256),
    };
  });
}
