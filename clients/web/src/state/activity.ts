// User activity for the idle lock: the app can call DeviceStates.touch itself,
// or let this watch the usual input events.

/** What watchActivity needs of a DeviceStates. */
export interface Touchable {
  touch(): void;
}

const INPUT = ["pointerdown", "keydown", "wheel", "touchstart"] as const;

/**
 * Calls device.touch on every pointer, key, wheel or touch event reaching
 * target (default: the global object, so window or a worker scope).
 * Returns the function that stops watching.
 */
export function watchActivity(device: Touchable, target: EventTarget = globalThis as unknown as EventTarget, events: readonly string[] = INPUT): () => void {
  const on = () => device.touch();
  for (const e of events) target.addEventListener(e, on, { passive: true, capture: true });
  return () => {
    for (const e of events) target.removeEventListener(e, on, { capture: true });
  };
}
