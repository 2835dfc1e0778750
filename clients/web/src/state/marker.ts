// The per-tab marker of a running unlock. It lets a reloaded page know an
// unlock was cut off by a reload instead of showing
// a plain locked screen as if nothing had happened. It holds a time only,
// never a secret. sessionStorage fits: it is per tab and survives a
// reload, and is gone when the tab closes.

export interface MarkerStore {
  get(key: string): string | null;
  set(key: string, value: string): void;
  remove(key: string): void;
}

/** A marker store in memory: for tests, and where sessionStorage is absent (a worker). */
export function memoryMarkers(): MarkerStore {
  const m = new Map<string, string>();
  return {
    get: (k) => m.get(k) ?? null,
    set: (k, v) => void m.set(k, v),
    remove: (k) => void m.delete(k),
  };
}

/** sessionStorage when the global exists, else a memory store. */
export function defaultMarkers(): MarkerStore {
  // Typed by shape: a worker's type library has no Storage.
  const s = (globalThis as { sessionStorage?: { getItem(k: string): string | null; setItem(k: string, v: string): void; removeItem(k: string): void } }).sessionStorage;
  if (s === undefined) return memoryMarkers();
  return {
    get: (k) => s.getItem(k),
    set: (k, v) => s.setItem(k, v),
    remove: (k) => s.removeItem(k),
  };
}

export const markerKey = (scope: string): string => "escrowd.unlocking." + scope;
