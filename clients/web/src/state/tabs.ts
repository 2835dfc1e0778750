// The messages tabs of one origin exchange on a BroadcastChannel, and their
// strict reading: a message of another shape (an older or newer page, a
// stray script) is ignored, never half-applied.

/** The channel's name; every tab and worker of the origin joins it. */
export const CHANNEL = "escrowd/device";

/** The part of BroadcastChannel used here. */
export interface Channel {
  postMessage(message: unknown): void;
  addEventListener(type: "message", listener: (ev: MessageEvent) => void): void;
  removeEventListener(type: "message", listener: (ev: MessageEvent) => void): void;
  close(): void;
}

export type TabMessage =
  /** A tab starts and asks the others for their open keys. */
  | { readonly v: 1; readonly t: "hello"; readonly from: string }
  /** scope unlocked here; keys is the codec's wire form (absent: no codec). */
  | { readonly v: 1; readonly t: "unlocked"; readonly from: string; readonly scope: string; readonly keys?: unknown }
  | { readonly v: 1; readonly t: "locked"; readonly from: string; readonly scope: string }
  | { readonly v: 1; readonly t: "logout"; readonly from: string }
  /** The user did something in that tab: idle timers elsewhere start over. */
  | { readonly v: 1; readonly t: "activity"; readonly from: string }
  /** A group's newest key version rose (stored under the group lock first). */
  | { readonly v: 1; readonly t: "version"; readonly from: string; readonly group: string; readonly version: number };

const isStr = (x: unknown): x is string => typeof x === "string" && x.length > 0 && x.length <= 512;

export function readMessage(data: unknown): TabMessage | undefined {
  if (typeof data !== "object" || data === null) return undefined;
  const m = data as Record<string, unknown>;
  if (m["v"] !== 1 || !isStr(m["from"])) return undefined;
  const from = m["from"];
  switch (m["t"]) {
    case "hello":
    case "logout":
    case "activity":
      return { v: 1, t: m["t"], from };
    case "locked":
      return isStr(m["scope"]) ? { v: 1, t: "locked", from, scope: m["scope"] } : undefined;
    case "unlocked":
      if (!isStr(m["scope"])) return undefined;
      return "keys" in m ? { v: 1, t: "unlocked", from, scope: m["scope"], keys: m["keys"] } : { v: 1, t: "unlocked", from, scope: m["scope"] };
    case "version": {
      const version = m["version"];
      if (!isStr(m["group"]) || typeof version !== "number" || !Number.isSafeInteger(version) || version < 1) return undefined;
      return { v: 1, t: "version", from, group: m["group"], version };
    }
    default:
      return undefined;
  }
}

/** The BroadcastChannel of the origin, or undefined where there is none. */
export function defaultChannel(): Channel | undefined {
  const BC = (globalThis as { BroadcastChannel?: new (name: string) => Channel }).BroadcastChannel;
  return BC === undefined ? undefined : new BC(CHANNEL);
}

export function newTabId(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return Math.random().toString(36).slice(2) + Date.now().toString(36);
}
