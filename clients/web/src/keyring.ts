// Which GDKs a device trusts. A GDK of version v is adopted only if its
// commitment is pinned (the device made it, or got the commitment over its
// enrolment channel), chained up (the chain slot of v − 1, opened under
// GDK v, gives the GDK v − 1 held here) or chained down (the chain slot of
// v, opened under the held GDK v + 1, gives it). Once a version is
// pinned, another commitment for it is "untrusted".

import { type Bytes, copy, equal } from "./bytes.js";
import { fail } from "./errors.js";
import type { Input, SealedRecord, Slot } from "./format.js";
import { parseRecord } from "./format.js";
import { type GDK, type OpenedRecord, type SlotInput, openChain, openRecord, parseAny } from "./gdk.js";

export class Keyring {
  private readonly gdks = new Map<number, GDK>();
  private readonly commits = new Map<number, Bytes>();

  constructor(readonly group: string) {}

  pin(version: number, commit: Uint8Array): void {
    const c = this.commits.get(version);
    if (c && !equal(c, commit)) fail("untrusted", "GDK version " + version + " has another commitment pinned");
    this.commits.set(version, copy(commit));
  }

  pinned(version: number): Bytes | undefined {
    return this.commits.get(version);
  }

  /** pins lists the pinned commitments (public values), to keep them across reloads. */
  pins(): [number, Bytes][] {
    return [...this.commits.entries()].sort((a, b) => a[0] - b[0]);
  }

  gdk(version: number): GDK | undefined {
    return this.gdks.get(version);
  }

  versions(): number[] {
    return [...this.gdks.keys()].sort((a, b) => a - b);
  }

  newest(): GDK | undefined {
    const v = this.versions();
    return v.length ? this.gdks.get(v[v.length - 1]!) : undefined;
  }

  /** add keeps a GDK opened from slot s if its version's pinned commitment is its own; else "untrusted". */
  add(s: Pick<Slot, "group" | "gdk_version">, gdk: GDK): GDK {
    if (s.group !== this.group || gdk.group !== this.group) fail("binding", "a slot of another group");
    if (gdk.version !== s.gdk_version) fail("commitment", "the GDK is not of the slot's version");
    const c = this.commits.get(s.gdk_version);
    if (!c) fail("untrusted", "GDK version " + s.gdk_version + " is neither pinned nor chained to a held GDK");
    if (!equal(c, gdk.commit)) fail("untrusted", "GDK version " + s.gdk_version + " is not the one this device trusts");
    this.gdks.set(s.gdk_version, gdk);
    return gdk;
  }

  /**
   * adoptNewer adopts gdk, opened from slot s of version v, through the
   * chain slot of version v − 1: opened under gdk it must give exactly the
   * GDK v − 1 held here.
   */
  async adoptNewer(s: Pick<Slot, "group" | "gdk_version">, gdk: GDK, chain: SlotInput): Promise<GDK> {
    const prev = this.gdks.get(s.gdk_version - 1);
    if (!prev) fail("untrusted", "no held GDK of version " + (s.gdk_version - 1) + " to chain GDK " + s.gdk_version + " to");
    const { slot: cs, gdk: old } = await openChain(chain, this.group, gdk);
    if (cs.gdk_version !== s.gdk_version - 1 || !equal(old.commit, prev.commit)) {
      fail("untrusted", "the chain of GDK " + s.gdk_version + " does not lead to the GDK " + (s.gdk_version - 1) + " this device holds");
    }
    this.pin(s.gdk_version, gdk.commit);
    return this.add(s, gdk);
  }

  /** adoptOlder opens a chain slot with the held GDK of version v + 1 and keeps the GDK v it gives. */
  async adoptOlder(chain: SlotInput): Promise<GDK> {
    const s = parseAny(chain);
    if (s.kind !== "chain") fail("binding", "a " + s.kind + " slot, not a chain slot");
    const next = this.gdks.get(s.gdk_version + 1);
    if (!next) fail("untrusted", "no held GDK of version " + (s.gdk_version + 1) + " to open the chain with");
    const { slot: cs, gdk: old } = await openChain(s, this.group, next);
    this.pin(cs.gdk_version, old.commit);
    this.gdks.set(cs.gdk_version, old);
    return old;
  }

  /** openRecord opens a record with the held GDK of its version. */
  async openRecord(input: Input | SealedRecord): Promise<OpenedRecord> {
    const r = typeof input === "object" && "ct" in input ? input : parseRecord(input);
    const gdk = this.gdks.get(r.gdk_version);
    if (!gdk || r.group !== this.group) fail("record", "no held GDK of version " + r.gdk_version + " of this group");
    return openRecord(r, gdk);
  }

  /** clear drops every GDK (the pins stay: they are public and keep trust across a lock). */
  clear(): void {
    this.gdks.clear();
  }
}
