// The sync transport the app implements (docs/DEVICE.md, "Sync"). The
// package never opens a connection itself: it hands bundles, records and
// reports to these methods and keeps what could not be sent.

/** A "code consumed" report: the unlock code of (group, user, epoch, index) was used on this device. */
export interface ConsumedCode {
  group: string;
  user: string;
  epoch: number;
  index: number;
}

/** What the backend says this user or device is enrolled in, with the commitments to pin. */
export interface Enrolment {
  group: string;
  /** The commitments of the group's GDK versions, from the enrolment channel (hex or bytes). */
  pins: { version: number; commit: string }[];
}

export interface Transport {
  /** pullBundle returns the group's bundle text (docs/FORMAT.md), or null if the backend has none. */
  pullBundle(group: string): Promise<string | null>;
  /** pushBundle stores slots this device made (a new password or passkey slot, a device slot) in the group's bundle. */
  pushBundle(group: string, bundle: string): Promise<void>;
  /** pullRecords returns the group's encrypted records (format record texts) changed after cursor. */
  pullRecords(group: string, cursor?: string): Promise<{ records: string[]; cursor?: string }>;
  /** pushRecords uploads encrypted records. */
  pushRecords(group: string, records: string[]): Promise<void>;
  /** reportConsumedCode tells the backend an unlock code was used; it must call the daemon's MarkUnlockCodeConsumed. */
  reportConsumedCode(report: ConsumedCode): Promise<void>;
  /** fetchEnrolments lists the groups a user belongs to (own and surrogate). */
  fetchEnrolments(user: string): Promise<Enrolment[]>;
}
