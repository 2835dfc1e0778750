// The SDK's Transport (clients/web/src/transport.ts) over the reference
// sync backend's device API (examples/syncbackend/README.md). Every
// request is signed by the device's Signer; bundles and records travel as
// base64 of their own text.

import { type Slot, encodeBundle, encodeSlot, parseBundle, parseRecord } from "../../../clients/web/src/format.js";
import type { ConsumedCode, Enrolment, Transport } from "../../../clients/web/src/transport.js";
import { type GroupView, type Notification, type RecordView, decodeGroupView, decodeGroups, decodeNotifications, decodeRecord, decodeRecords, parseJSON } from "./decode.js";
import { type Signer, b64, hex } from "./sign.js";

export type { GroupView, Notification, RecordView };

/** BackendError is a non-2xx answer: the backend's error code, its message, and for a conflict the current version. */
export class BackendError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly current?: number) {
    super(message);
  }
}

const bytes = (s: string) => b64(new TextEncoder().encode(s));

/** Backend makes signed calls to the sync backend at base (scheme://host:port). */
export class Backend {
  constructor(readonly base: string, readonly signer: Signer, private readonly fetcher: typeof fetch = (...a) => fetch(...a)) {}

  /** call makes one signed request and returns the answer's JSON, not yet decoded; a non-2xx answer is a BackendError. */
  async call(method: string, uri: string, body?: unknown): Promise<unknown> {
    const raw = body === undefined ? new Uint8Array(0) : new TextEncoder().encode(JSON.stringify(body));
    const headers: Record<string, string> = await this.signer.headers(method, uri, raw);
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const init: RequestInit = { method, headers, cache: "no-store" };
    if (body !== undefined) init.body = raw as BufferSource;
    const res = await this.fetcher(this.base + uri, init);
    const t = await res.text();
    if (!res.ok) {
      let v: Record<string, unknown> = {};
      try {
        const p = JSON.parse(t) as unknown;
        if (typeof p === "object" && p !== null) v = p as Record<string, unknown>;
      } catch {
        // A proxy's HTML error page: reported by its status.
      }
      const current = typeof v.current === "number" && Number.isSafeInteger(v.current) && v.current >= 0 ? v.current : undefined;
      throw new BackendError(res.status, typeof v.error === "string" ? v.error.slice(0, 64) : "http_" + res.status, typeof v.message === "string" ? v.message.slice(0, 500) : "HTTP " + res.status, current);
    }
    return parseJSON(t);
  }

  createAccount(account: string, memberKey: Uint8Array, signKey: Uint8Array, wrapKey: Uint8Array): Promise<unknown> {
    return this.call("POST", "/v1/accounts", { account, member_key: b64(memberKey), device: this.signer.device, sign_key: b64(signKey), wrap_key: b64(wrapKey) });
  }

  /** enrolDevice enrols this device (the signer's) into account, with the approval another device of the account signed. */
  enrolDevice(account: string, signKey: Uint8Array, wrapKey: Uint8Array, approver: string, approval: Uint8Array): Promise<unknown> {
    return this.call("POST", "/v1/devices", { account, device: this.signer.device, sign_key: b64(signKey), wrap_key: b64(wrapKey), approver, approval: b64(approval) });
  }

  async createGroup(group: string): Promise<GroupView> {
    return decodeGroupView(await this.call("POST", "/v1/groups", { group }));
  }

  async groups(): Promise<string[]> {
    return decodeGroups(await this.call("GET", "/v1/groups"));
  }

  async group(group: string): Promise<GroupView> {
    return decodeGroupView(await this.call("GET", "/v1/groups/" + encodeURIComponent(group)));
  }

  async putBundle(group: string, version: number, bundle: string): Promise<GroupView> {
    return decodeGroupView(await this.call("PUT", "/v1/groups/" + encodeURIComponent(group) + "/bundle", { version, bundle: bytes(bundle) }));
  }

  async addMember(group: string, account: string): Promise<GroupView> {
    return decodeGroupView(await this.call("PUT", "/v1/groups/" + encodeURIComponent(group) + "/members/" + encodeURIComponent(account)));
  }

  /** removeMember removes a surrogate: the backend has escrowd rotate the group's GDK. */
  async removeMember(group: string, account: string): Promise<GroupView> {
    return decodeGroupView(await this.call("DELETE", "/v1/groups/" + encodeURIComponent(group) + "/members/" + encodeURIComponent(account)));
  }

  async record(group: string, id: string): Promise<RecordView> {
    return decodeRecord(await this.call("GET", "/v1/groups/" + encodeURIComponent(group) + "/records/" + encodeURIComponent(id)));
  }

  async putRecord(group: string, id: string, version: number, record: string): Promise<RecordView> {
    return decodeRecord(await this.call("PUT", "/v1/groups/" + encodeURIComponent(group) + "/records/" + encodeURIComponent(id), { version, record: bytes(record) }));
  }

  async records(group: string, after?: string): Promise<RecordView[]> {
    const q = after ? "?after=" + encodeURIComponent(after) : "";
    return decodeRecords(await this.call("GET", "/v1/groups/" + encodeURIComponent(group) + "/records" + q));
  }

  async consumed(group: string, epoch: number, index: number): Promise<GroupView> {
    return decodeGroupView(await this.call("POST", "/v1/groups/" + encodeURIComponent(group) + "/codes/consumed", { epoch, index }));
  }

  async notifications(after = 0): Promise<Notification[]> {
    return decodeNotifications(await this.call("GET", "/v1/notifications" + (after ? "?after=" + after : "")));
  }
}

/** bundleText is a group view's bundle text, or null if the group has none yet. */
export function bundleText(v: GroupView): string | null {
  return v.bundle ?? null;
}

/** pins are the commitments a device pins, from the backend as its enrolment channel. */
export function pins(v: GroupView): { version: number; commit: string }[] {
  return v.commitments.map((c, i) => ({ version: i + 1, commit: hex(c) }));
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
        out.push(r.record);
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

  /** owners holds each group's owner as last read: the app shows whose group a surrogate reads. */
  readonly owners = new Map<string, string>();
  /** surrogates holds each group's surrogates as last read: an owner removes them. */
  readonly surrogates = new Map<string, string[]>();
  /** listed is the set of groups the backend listed in the last round (null before one): a group held here and not listed is one the account left. */
  listed: ReadonlySet<string> | null = null;

  async fetchEnrolments(): Promise<Enrolment[]> {
    const out: Enrolment[] = [];
    const groups = await this.backend.groups();
    for (const g of groups) {
      const v = await this.backend.group(g);
      this.owners.set(g, v.owner);
      this.surrogates.set(g, v.surrogates);
      out.push({ group: g, pins: pins(v) });
    }
    this.listed = new Set(groups);
    return out;
  }
}
