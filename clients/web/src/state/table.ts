// The transition table of a key state machine. One table serves the device
// (its keys come from a password or a passkey) and each group (its keys
// come from the device's): the two differ only in what their unlock work
// is given. docs/DEVICE.md ("States") is generated from this table.

/** Where a scope's keys are. */
export type KeyState = "locked" | "unlocking" | "unlocked" | "failed" | "wiped";

/** What moves a machine. Events named remote-* come from another tab. */
export type KeyEvent =
  | "unlock"
  | "succeed"
  | "fail"
  | "cancel"
  | "interrupted"
  | "retry"
  | "lock"
  | "idle"
  | "fault"
  | "logout"
  | "enrol"
  | "remote-unlock"
  | "remote-lock"
  | "remote-logout";

export interface Transition {
  readonly from: KeyState;
  readonly event: KeyEvent;
  readonly to: KeyState;
  /** Why the row exists; printed in the generated diagram's table. */
  readonly why: string;
}

export const STATES: readonly KeyState[] = ["locked", "unlocking", "unlocked", "failed", "wiped"];

/**
 * Every allowed move. A pair (state, event) not listed here is refused when
 * it comes from this tab (StateError "invalid-transition") and ignored when
 * it comes from another tab, whose view may be a step behind.
 */
export const TRANSITIONS: readonly Transition[] = [
  { from: "locked", event: "unlock", to: "unlocking", why: "a secret is given; the unlock work starts and a per-tab marker is written" },
  { from: "locked", event: "interrupted", to: "failed", why: "the marker survived a reload: an unlock was cut off, its secret is gone" },
  { from: "locked", event: "remote-unlock", to: "unlocked", why: "another tab unlocked and posted its non-extractable keys" },
  { from: "locked", event: "logout", to: "wiped", why: "logout without unlocking: the stored keys and records are deleted" },
  { from: "locked", event: "remote-logout", to: "wiped", why: "another tab logged out" },

  { from: "unlocking", event: "succeed", to: "unlocked", why: "the unlock work returned the keys; the marker is cleared" },
  { from: "unlocking", event: "fail", to: "failed", why: "the unlock work threw (wrong secret, damaged slot, key never derived…)" },
  { from: "unlocking", event: "cancel", to: "locked", why: "the user withdrew (passkey prompt dismissed); nothing is reported" },
  { from: "unlocking", event: "lock", to: "locked", why: "lock wins over a running unlock: its result is dropped" },
  { from: "unlocking", event: "remote-unlock", to: "unlocked", why: "another tab finished first: this tab's unlock is aborted, its keys adopted" },
  { from: "unlocking", event: "logout", to: "wiped", why: "logout wins over a running unlock" },
  { from: "unlocking", event: "remote-logout", to: "wiped", why: "another tab logged out" },

  { from: "unlocked", event: "lock", to: "locked", why: "the user, the app or the device scope locked: the keys are dropped" },
  { from: "unlocked", event: "idle", to: "locked", why: "no activity in any tab for the idle time" },
  { from: "unlocked", event: "remote-lock", to: "locked", why: "another tab locked" },
  { from: "unlocked", event: "fault", to: "failed", why: "the held keys proved unusable (a record or a newer key will not open with them)" },
  { from: "unlocked", event: "logout", to: "wiped", why: "logout: keys dropped, then storage deleted under the device lock" },
  { from: "unlocked", event: "remote-logout", to: "wiped", why: "another tab logged out" },

  { from: "failed", event: "retry", to: "unlocking", why: "the user gives the secret again" },
  { from: "failed", event: "lock", to: "locked", why: "the user dismisses the failure" },
  { from: "failed", event: "remote-unlock", to: "unlocked", why: "another tab unlocked" },
  { from: "failed", event: "logout", to: "wiped", why: "the way out when the keys cannot be opened" },
  { from: "failed", event: "remote-logout", to: "wiped", why: "another tab logged out" },

  { from: "wiped", event: "enrol", to: "locked", why: "a user enrolled this device again: new keys are stored" },
];

const index = new Map<string, KeyState>(TRANSITIONS.map((t) => [t.from + " " + t.event, t.to]));

/** The state (from, event) leads to, or undefined when the table has no row. */
export function next(from: KeyState, event: KeyEvent): KeyState | undefined {
  return index.get(from + " " + event);
}
