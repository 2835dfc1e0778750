// One writer per group, across tabs and workers, with the Web Locks API.
// Writers hold the device lock shared and their group's lock exclusive;
// logout holds the device lock exclusive, so it waits for the writes under
// way and every write after it finds the device wiped. Do not nest two
// group writes: a shared request queued behind a waiting exclusive one
// would wait for ever.

/** The part of navigator.locks used here (a LockManager fits). */
export interface Locks {
  request<T>(name: string, options: { mode?: "exclusive" | "shared"; signal?: AbortSignal }, callback: (lock: unknown) => Promise<T> | T): Promise<T>;
}

export const DEVICE_LOCK = "escrowd/device";
export const groupLock = (group: string): string => "escrowd/group/" + group;

/** navigator.locks when present (pages, workers, service workers), else undefined. */
export function defaultLocks(): Locks | undefined {
  const n = (globalThis as { navigator?: { locks?: Locks } }).navigator;
  return n?.locks;
}

/** Runs fn as the only writer of group in every tab of the origin. */
export function withGroupWriter<T>(locks: Locks, group: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  const opt = (mode: "exclusive" | "shared") => (signal ? { mode, signal } : { mode });
  return locks.request(DEVICE_LOCK, opt("shared"), () => locks.request(groupLock(group), opt("exclusive"), () => fn()));
}

/** Runs fn with no group writer anywhere: for logout's wipe. */
export function withDeviceExclusive<T>(locks: Locks, fn: () => Promise<T>): Promise<T> {
  return locks.request(DEVICE_LOCK, { mode: "exclusive" }, () => fn());
}
