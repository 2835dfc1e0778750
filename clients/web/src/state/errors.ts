// Errors of the key state machines. Each has a stable code a UI can switch
// on and a message a user can read; none ever carries a secret.

import type { KeyState } from "./table.js";

/** Codes the state layer itself raises. The unlock work adds its own. */
export type StateErrorCode =
  | "locked" // the keys are not open in this tab (never derived, locked, failed)
  | "wiped" // the device was logged out; nothing is left to open
  | "invalid-transition" // the call makes no sense in the current state
  | "interrupted" // a reload cut an unlock off
  | "stale-key" // another tab adopted a newer group key
  | "unshareable" // a value would have crossed tabs with raw key bytes
  | "aborted"; // the caller's AbortSignal fired

const messages: Record<StateErrorCode, string> = {
  locked: "The data is locked. Unlock it with your password or passkey first.",
  wiped: "You are logged out on this device.",
  "invalid-transition": "That cannot be done right now.",
  interrupted: "Unlocking was interrupted. Please unlock again.",
  "stale-key": "A newer key exists for this group. Please try again.",
  unshareable: "Keys cannot be shared with other tabs in this form.",
  aborted: "The operation was cancelled.",
};

export class StateError extends Error {
  override readonly name = "StateError";
  readonly code: StateErrorCode;
  /** The machine's state when the error was raised, when one applies. */
  readonly state: KeyState | undefined;

  constructor(code: StateErrorCode, opts: { state?: KeyState; detail?: string; cause?: unknown } = {}) {
    super(opts.detail ? messages[code] + " (" + opts.detail + ")" : messages[code], opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.state = opts.state;
  }
}

/**
 * Why a machine is in the failed state. code comes from the unlock work's
 * error when it carries a string `code` (the crypto layer's error classes
 * do), or is "unlock-failed". message is the error's own when it has a
 * code (without a trailing " (detail)" that repeats its `detail` field),
 * else a generic one: an unknown error's text is not shown to users.
 */
export interface Failure {
  readonly code: string;
  readonly message: string;
  /** The original error, for the app's own diagnostics; never posted to other tabs. */
  readonly cause?: unknown;
  /** For code "interrupted": the step a reload cut off (KeyMachine.pending); absent for an unlock. */
  readonly step?: string;
}

export function failureOf(err: unknown): Failure {
  if (typeof err === "object" && err !== null) {
    const { code, message, detail } = err as { code?: unknown; message?: unknown; detail?: unknown };
    if (typeof code === "string" && code !== "") {
      let text = typeof message === "string" && message !== "" ? message : "Unlock failed.";
      // A DeviceError's message ends with " (detail)", written for logs: the user sees the message alone.
      const tail = typeof detail === "string" && detail !== "" ? " (" + detail + ")" : "";
      if (tail !== "" && text.endsWith(tail)) text = text.slice(0, -tail.length);
      return { code, message: text, cause: err };
    }
  }
  return { code: "unlock-failed", message: "Unlock failed.", cause: err };
}

export function isAbort(err: unknown): boolean {
  return typeof err === "object" && err !== null && (err as { name?: unknown }).name === "AbortError";
}
