// One key state machine: the device's or a group's. It runs the moves of
// table.ts, holds the opaque handle the unlock work returned while
// unlocked, and tells subscribers about every move. It knows nothing of
// cryptography: the unlock work is injected.

import { type Clock, systemClock } from "./clock.js";
import { type Failure, StateError, failureOf, isAbort } from "./errors.js";
import { type MarkerStore, defaultMarkers, markerKey } from "./marker.js";
import { type KeyEvent, type KeyState, next } from "./table.js";

/**
 * The unlock work: given the secret (a password or PRF output for the
 * device; the device's handle for a group) it returns an opaque handle to
 * the opened keys, or throws. An error with a string `code` becomes the
 * failure's code; an AbortError (the signal fired, or the user dismissed a
 * passkey prompt) returns to locked without a failure.
 */
export type UnlockWork<S, H> = (secret: S, signal: AbortSignal) => Promise<H>;

/** Which side caused a move. */
export type ChangeOrigin = "local" | "remote";

/** What subscribers receive on every move. */
export interface StateChange {
  readonly scope: string;
  readonly from: KeyState;
  readonly to: KeyState;
  readonly event: KeyEvent;
  readonly origin: ChangeOrigin;
  /** Set when to is "failed". */
  readonly failure?: Failure;
}

export type StateListener = (change: StateChange) => void;

export interface MachineOptions<S, H> {
  /** "device" or "group:<id>"; names the marker and the messages to other tabs. */
  readonly scope: string;
  readonly unlock: UnlockWork<S, H>;
  /** Lock after this many milliseconds without activity; 0 or absent: never. */
  readonly idleMs?: number;
  readonly clock?: Clock;
  /** Where the running-unlock marker lives; null: no marker (groups). Default sessionStorage. */
  readonly marker?: MarkerStore | null;
  /** "wiped" when the device holds no enrolment; default "locked". */
  readonly initial?: "locked" | "wiped";
  /** Called with a handle being let go, so the owner can drop its references. */
  readonly drop?: (handle: H) => void;
}

const STEP = /^[a-z-]{1,32}$/;
// Tells one pending() marker from the next, so a stale ender leaves a newer step marked.
let stepSeq = 0;

/** The step named in a marker, if it is one pending() wrote. */
function stepOf(marker: string): string | undefined {
  try {
    const v = JSON.parse(marker) as unknown;
    const step = typeof v === "object" && v !== null ? (v as { step?: unknown }).step : undefined;
    return typeof step === "string" && STEP.test(step) ? step : undefined;
  } catch {
    return undefined;
  }
}

interface Attempt {
  readonly ac: AbortController;
}

export class KeyMachine<S, H> {
  readonly scope: string;
  #state: KeyState;
  #handle: H | undefined;
  #failure: Failure | undefined;
  #attempt: Attempt | undefined;
  readonly #work: UnlockWork<S, H>;
  readonly #idleMs: number;
  readonly #clock: Clock;
  readonly #marker: MarkerStore | null;
  readonly #drop: ((h: H) => void) | undefined;
  readonly #listeners = new Set<StateListener>();
  #lastActivity = 0;
  #timer: unknown;

  constructor(opts: MachineOptions<S, H>) {
    this.scope = opts.scope;
    this.#work = opts.unlock;
    this.#idleMs = opts.idleMs ?? 0;
    this.#clock = opts.clock ?? systemClock;
    this.#marker = opts.marker === undefined ? defaultMarkers() : opts.marker;
    this.#drop = opts.drop;
    this.#state = opts.initial ?? "locked";
    // A marker left by the previous document of this tab: it reloaded (or
    // crashed) while unlocking, or in a step marked with pending(). The
    // secret died with it; say so.
    const key = markerKey(this.scope);
    const left = this.#marker?.get(key) ?? null;
    if (left !== null) {
      this.#marker?.remove(key);
      if (this.#state === "locked") {
        const step = stepOf(left);
        const f = failureOf(new StateError("interrupted"));
        this.#failure = step === undefined ? f : { ...f, message: "The " + step + " was interrupted. Please start it again.", step };
        this.#state = next("locked", "interrupted") ?? "failed";
      }
    }
  }

  get state(): KeyState {
    return this.#state;
  }

  /** Why the machine is failed; undefined in every other state. */
  get failure(): Failure | undefined {
    return this.#failure;
  }

  /** Subscribes to every move; returns the unsubscribe function. */
  on(listener: StateListener): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }

  /**
   * Runs the unlock work with the secret, from locked (event unlock) or
   * failed (event retry). Resolves once unlocked, by this attempt or by
   * another tab's; rejects with the work's own error when it failed (the
   * machine is then failed), and with StateError "aborted" when a lock, a
   * logout or a cancelled prompt ended the attempt.
   */
  async unlock(secret: S): Promise<void> {
    this.#move(this.#state === "failed" ? "retry" : "unlock", "local");
    const attempt: Attempt = { ac: new AbortController() };
    this.#attempt = attempt;
    let handle: H;
    try {
      handle = await this.#work(secret, attempt.ac.signal);
    } catch (err) {
      if (this.#attempt !== attempt) return this.#superseded();
      this.#attempt = undefined;
      if (isAbort(err)) {
        this.#move("cancel", "local");
        throw new StateError("aborted", { state: this.#state, cause: err });
      }
      const failure = failureOf(err);
      this.#move("fail", "local", () => (this.#failure = failure));
      throw err;
    }
    if (this.#attempt !== attempt) {
      this.#drop?.(handle);
      return this.#superseded();
    }
    this.#attempt = undefined;
    this.#move("succeed", "local", () => (this.#handle = handle));
  }

  #superseded(): void {
    if (this.#state === "unlocked") return;
    throw new StateError("aborted", { state: this.#state });
  }

  /** Locks: drops the handle, aborts a running unlock, dismisses a failure. A no-op when locked or wiped. */
  lock(): void {
    if (this.#state === "locked" || this.#state === "wiped") return;
    this.#move("lock", "local");
  }

  /** Drops everything held and moves to wiped. Storage is the caller's (DeviceStates.logout). */
  logout(): void {
    if (this.#state === "wiped") return;
    this.#move("logout", "local");
  }

  /** After a new enrolment on a wiped device. */
  enrol(): void {
    this.#move("enrol", "local");
  }

  /** The held keys proved unusable: fail with the given error's code, to retry or log out. */
  fault(err: unknown): void {
    const failure = failureOf(err);
    this.#move("fault", "local", () => (this.#failure = failure));
  }

  /**
   * The handle to the open keys, counted as activity. Throws StateError
   * "locked" (or "wiped") when the keys are not open: an operation that
   * needs a key never derived fails at once and never falls back to clear
   * data. Past the idle deadline it locks first, even if the idle timer has
   * not fired yet.
   */
  keys(): H {
    // The idle deadline holds even when its timer runs late (a hidden tab's
    // timers are throttled): past it, the keys are not handed out.
    if (this.#state === "unlocked" && this.#idleMs > 0 && this.#clock.now() - this.#lastActivity >= this.#idleMs) this.#move("idle", "local");
    if (this.#state !== "unlocked" || this.#handle === undefined) {
      throw new StateError(this.#state === "wiped" ? "wiped" : "locked", { state: this.#state, detail: this.scope });
    }
    this.touch();
    return this.#handle;
  }

  /**
   * The handle while unlocked, else undefined, without counting as
   * activity: for the machinery (posting keys to a new tab must not keep
   * this one open). Past the idle deadline it is undefined.
   */
  held(): H | undefined {
    if (this.#state !== "unlocked") return undefined;
    if (this.#idleMs > 0 && this.#clock.now() - this.#lastActivity >= this.#idleMs) return undefined;
    return this.#handle;
  }

  /** Waits until unlocked; rejects on wiped or when signal fires. */
  whenUnlocked(signal?: AbortSignal): Promise<H> {
    if (this.#state === "unlocked" && this.#handle !== undefined) return Promise.resolve(this.#handle);
    if (this.#state === "wiped") return Promise.reject(new StateError("wiped", { state: "wiped" }));
    return new Promise<H>((resolve, reject) => {
      const onAbort = () => {
        off();
        reject(new StateError("aborted", { state: this.#state }));
      };
      const off = this.on((c) => {
        if (c.to === "unlocked" && this.#handle !== undefined) {
          off();
          signal?.removeEventListener("abort", onAbort);
          resolve(this.#handle);
        } else if (c.to === "wiped") {
          off();
          signal?.removeEventListener("abort", onAbort);
          reject(new StateError("wiped", { state: "wiped" }));
        }
      });
      if (signal?.aborted) onAbort();
      else signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /**
   * Marks a step that must not be half done across a reload (a recovery
   * between "code accepted" and "new password sealed"). While it is marked,
   * a reload lands in failed, code "interrupted", with failure.step = step.
   * The returned function ends the step; leaving unlocked ends it too.
   * step is a short lowercase name ([a-z-], at most 32 characters); it is
   * kept in sessionStorage, so it must never carry a secret.
   */
  pending(step: string): () => void {
    if (!STEP.test(step)) throw new TypeError("a step name is [a-z-]{1,32}");
    this.keys();
    const key = markerKey(this.scope);
    const value = JSON.stringify({ since: this.#clock.now(), step, n: ++stepSeq });
    this.#marker?.set(key, value);
    return () => {
      if (this.#marker?.get(key) === value) this.#marker.remove(key);
    };
  }

  /** Marks activity now: pushes the idle lock back. */
  touch(): void {
    this.#lastActivity = this.#clock.now();
  }

  /** Activity seen in another tab at time at (this clock). */
  noteActivity(at: number): void {
    if (at > this.#lastActivity) this.#lastActivity = at;
  }

  /** Another tab unlocked and posted keys: adopt them. Ignored when the table has no row. */
  adopt(handle: H): boolean {
    const done = this.#move("remote-unlock", "remote", () => (this.#handle = handle));
    if (!done) this.#drop?.(handle);
    return done;
  }

  remoteLock(): boolean {
    return this.#move("remote-lock", "remote");
  }

  remoteLogout(): boolean {
    return this.#move("remote-logout", "remote");
  }

  /**
   * Applies one row of the table: leaves the old state (clears the marker,
   * aborts an attempt, drops the handle), runs enter, enters the new state,
   * tells the subscribers. Returns false for a remote event without a row.
   */
  #move(event: KeyEvent, origin: ChangeOrigin, enter?: () => void): boolean {
    const from = this.#state;
    const to = next(from, event);
    if (to === undefined) {
      if (origin === "remote") return false;
      throw new StateError("invalid-transition", { state: from, detail: this.scope + ": " + event + " in " + from });
    }
    if (from === "unlocking") {
      this.#marker?.remove(markerKey(this.scope));
      const a = this.#attempt;
      this.#attempt = undefined;
      a?.ac.abort();
    }
    if (from === "unlocked") {
      this.#marker?.remove(markerKey(this.scope));
      this.#stopIdle();
      const h = this.#handle;
      this.#handle = undefined;
      if (h !== undefined) this.#drop?.(h);
    }
    if (from === "failed") this.#failure = undefined;
    enter?.();
    this.#state = to;
    if (to === "unlocking") this.#marker?.set(markerKey(this.scope), JSON.stringify({ since: this.#clock.now() }));
    if (to === "unlocked") {
      this.touch();
      this.#armIdle();
    }
    const change: StateChange = this.#failure && to === "failed" ? { scope: this.scope, from, to, event, origin, failure: this.#failure } : { scope: this.scope, from, to, event, origin };
    for (const l of [...this.#listeners]) {
      try {
        l(change);
      } catch (err) {
        // A subscriber's bug must not stop the machine or the other subscribers.
        this.#clock.setTimeout(() => {
          throw err;
        }, 0);
      }
    }
    return true;
  }

  #armIdle(): void {
    if (this.#idleMs <= 0) return;
    const wait = Math.max(0, this.#lastActivity + this.#idleMs - this.#clock.now());
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = undefined;
      if (this.#state !== "unlocked") return;
      if (this.#clock.now() - this.#lastActivity >= this.#idleMs) this.#move("idle", "local");
      else this.#armIdle();
    }, wait);
  }

  #stopIdle(): void {
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
