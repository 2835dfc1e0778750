// The SDK's Transport (clients/web/src/transport.ts) over the reference
// sync backend's device API (examples/syncbackend/README.md). Every
// request is signed by the device's Signer; bundles and records travel as
// base64 of their own text.

import { type Slot, encodeBundle, encodeSlot, parseBundle, parseRecord } from "../../../clients/web/src/format.js";
import type { ConsumedCode, Enrolment, Transport } from "../../../clients/web/src/transport.js";
import { type Signer, b64, hex, unb64 } from "./sign.js";

/** BackendError is a non-2xx answer: the backend's error code, its message, and for a conflict the current version. */
export class BackendError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly current?: number) {
    super(message);
  }
}

export interface GroupView {
  group: string;
  version: number;
  owner: string;
  surrogates: string[];
  gdk_version: number;
  commitments: string[];
  escrow_key: { version: number; suite: "ecdh-p256" | "rsa-oaep-sha1" | "rsa-oaep-sha256"; public_key: string };
  epoch: number;
  bundle?: string;
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

const text = (b: string) => new TextDecoder().decode(unb64(b));
const bytes = (s: string) => b64(new TextEncoder().encode(s));

/** Backend makes signed calls to the sync backend at base (scheme://host:port). */
export class Backend {
  constructor(readonly base: string, readonly signer: Signer, private readonly fetcher: typeof fetch = (...a) => fetch(...a)) {}

  async call<T>(method: string, uri: string, body?: unknown): Promise<T> {
    const raw = body === undefined ? new Uint8Array(0) : new TextEncoder().encode(JSON.stringify(body));
    const headers: Record<string, string> = await this.signer.headers(method, uri, raw);
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const init: RequestInit = { method, headers, cache: "no-store" };
    if (body !== undefined) init.body = raw as BufferSource;
    const res = await this.fetcher(this.base + uri, init);
    const t = await res.text();
    let v: Record<string, unknown> = {};
    try {
      v = t ? (JSON.parse(t) as Record<string, unknown>) : {};
    } catch {
      // A proxy's HTML error page: reported by status below.
    }
    if (!res.ok) {
      throw new BackendError(res.status, typeof v.error === "string" ? v.error : "http_" + res.status, typeof v.message === "string" ? v.message : t.slice(0, 200), typeof v.current === "number" ? v.current : undefined);
    }
    return v as T;
  }

  createAccount(account: string, memberKey: Uint8Array, signKey: Uint8Array, wrapKey: Uint8Array): Promise<unknown> {
    return this.call("POST", "/v1/accounts", { account, member_key: b64(memberKey), device: this.signer.device, sign_key: b64(signKey), wrap_key: b64(wrapKey) });
  }

  createGroup(group: string): Promise<GroupView> {
    return this.call("POST", "/v1/groups", { group });
  }

  async groups(): Promise<string[]> {
    return (await this.call<{ groups: string[] }>("GET", "/v1/groups")).groups;
  }

  group(group: string): Promise<GroupView> {
    return this.call("GET", "/v1/groups/" + encodeURIComponent(group));
  }

  putBundle(group: string, version: number, bundle: string): Promise<GroupView> {
    return this.call("PUT", "/v1/groups/" + encodeURIComponent(group) + "/bundle", { version, bundle: bytes(bundle) });
  }

  addMember(group: string, account: string): Promise<GroupView> {
    return this.call("PUT", "/v1/groups/" + encodeURIComponent(group) + "/members/" + encodeURIComponent(account));
  }

  putRecord(group: string, id: string, version: number, record: string): Promise<{ id: string; version: number }> {
    return this.call("PUT", "/v1/groups/" + encodeURIComponent(group) + "/records/" + encodeURIComponent(id), { version, record: bytes(record) });
  }

  async records(group: string, after?: string): Promise<{ id: string; version: number; record: string }[]> {
    const q = after ? "?after=" + encodeURIComponent(after) : "";
    return (await this.call<{ records: { id: string; version: number; record: string }[] }>("GET", "/v1/groups/" + encodeURIComponent(group) + "/records" + q)).records;
  }

  consumed(group: string, epoch: number, index: number): Promise<GroupView> {
    return this.call("POST", "/v1/groups/" + encodeURIComponent(group) + "/codes/consumed", { epoch, index });
  }

  async notifications(after = 0): Promise<Notification[]> {
    return (await this.call<{ notifications: Notification[] }>("GET", "/v1/notifications" + (after ? "?after=" + after : ""))).notifications;
  }
}

/** bundleText decodes a group view's bundle. */
export function bundleText(v: GroupView): string | null {
  return v.bundle ? text(v.bundle) : null;
}

/** pins are the commitments a device pins, from the backend as its enrolment channel. */
export function pins(v: GroupView): { version: number; commit: string }[] {
  return v.commitments.map((c, i) => ({ version: i + 1, commit: hex(unb64(c)) }));
}

/**
 * SyncTransport is the SDK's Transport over a Backend for one account.
 * Records are written with compare-and-set on the version last read; a
 * conflict means another device wrote the record since: this device's
 * write, which the user just made, is retried on the current version
 * (last writer wins, per record).
 */
export class SyncTransport implements Transport {
  private readonly versions = new Map<string, number>();
  /**
   * unsent holds why bundles were not taken since the last take(): the
   * SDK keeps such slots for its next round without reporting it, and a
   * sync status must not say "synced" while they wait.
   */
  private unsent: string[] = [];

  /** take returns and clears what was not sent. */
  take(): string[] {
    const u = this.unsent;
    this.unsent = [];
    return u;
  }

  constructor(readonly backend: Backend, readonly account: string) {}

  async pullBundle(group: string): Promise<string | null> {
    return bundleText(await this.backend.group(group));
  }

  /**
   * pushBundle sends the slots this device may change (its account's
   * password and passkey slots) on top of the backend's current bundle, so
   * slots the backend added since this device's last pull are kept.
   */
  async pushBundle(group: string, bundle: string): Promise<void> {
    const own = (s: { kind: string; id?: string }) => (s.kind === "password" || s.kind === "passkey-prf") && s.id === this.account;
    const mine = parseBundle(bundle).slots.filter(own);
    try {
      await this.putOwn(group, mine, own);
    } catch (e) {
      this.unsent.push(group + ": " + (e instanceof Error ? e.message : String(e)));
      throw e;
    }
  }

  private async putOwn(group: string, mine: Slot[], own: (s: Slot) => boolean): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const v = await this.backend.group(group);
      const cur = bundleText(v);
      const kept = cur ? parseBundle(cur).slots.filter((s) => !own(s)) : [];
      try {
        await this.backend.putBundle(group, v.version, encodeBundle(group, [...kept, ...mine].map((s) => encodeSlot(s))));
        return;
      } catch (e) {
        if (!(e instanceof BackendError && e.code === "conflict") || attempt >= 2) throw e;
      }
    }
  }

  async pullRecords(group: string): Promise<{ records: string[] }> {
    // A full pull: the backend pages by id, which does not find records
    // changed behind the cursor.
    const out: string[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await this.backend.records(group, after);
      for (const r of page) {
        this.versions.set(group + "\n" + r.id, r.version);
        out.push(text(r.record));
      }
      if (page.length < 100) return { records: out };
      after = page[page.length - 1]!.id;
    }
  }

  async pushRecords(group: string, records: string[]): Promise<void> {
    for (const t of records) {
      const id = parseRecord(t).id;
      const key = group + "\n" + id;
      let version = this.versions.get(key) ?? 0;
      for (let attempt = 0; ; attempt++) {
        try {
          const r = await this.backend.putRecord(group, id, version, t);
          this.versions.set(key, r.version);
          break;
        } catch (e) {
          if (!(e instanceof BackendError && e.code === "conflict" && e.current !== undefined) || attempt >= 2) throw e;
          version = e.current;
        }
      }
    }
  }

  async reportConsumedCode(r: ConsumedCode): Promise<void> {
    await this.backend.consumed(r.group, r.epoch, r.index);
  }

  async fetchEnrolments(): Promise<Enrolment[]> {
    const out: Enrolment[] = [];
    for (const g of await this.backend.groups()) out.push({ group: g, pins: pins(await this.backend.group(g)) });
    return out;
  }
}
