// One group locked on its own (UnlockedKeys.lockGroup) and opened again
// (Device.unlockGroup), run on the package itself in Debian's Chromium: real
// IndexedDB and WebCrypto, one fresh profile. A locked group's keyring is
// cleared, reads, writes and groupKeys are "locked", the other group reads
// and writes on, a sync still stores the locked group's records
// (encrypted), device keys made again keep it shut, and unlockGroup opens
// that group alone with the member key (or the device key) the keys hold.
// A missing Chromium or playwright-core fails the test.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { sdkPage } from "./sdk_page.mjs";

let page, close;

before(async () => {
  ({ page, close } = await sdkPage("group lock"));
  await page.evaluate(() => {
    window.h = {
      code: async (f) => {
        try {
          await f();
          return "";
        } catch (e) {
          return e instanceof window.sdk.DeviceError ? e.code : "not a DeviceError: " + e;
        }
      },
      text: (b) => (b === undefined ? undefined : new TextDecoder().decode(b)),
    };
  });
});

after(async () => {
  await close?.();
});

test("lockGroup drops one group's keys, sync still stores its records, unlockGroup opens it alone", async () => {
  const r = await page.evaluate(async () => {
    const { sdk, h } = window;
    const d = await sdk.Device.open({ name: "grouplock-1", deviceId: "bob-dev" });
    const made = await d.createUser("bob", "bob-keys", "bob's password 1");
    const devPub = await d.devicePublicKey();
    // Two groups, each with a member slot for bob and a device slot for this device.
    const gdks = {};
    for (const g of ["bob-notes", "ann-notes"]) {
      const gdk = await sdk.newGDK(g, 1);
      gdks[g] = gdk;
      const slots = [
        await sdk.sealPublic("member", { key_version: 1, id: "bob" }, "ecdh-p256", made.memberPublic, gdk),
        await sdk.sealPublic("device", { key_version: 1, id: "bob-dev" }, "ecdh-p256", devPub, gdk),
      ];
      await d.addGroup(g, sdk.encodeBundle(g, slots), [{ version: 1, commit: gdk.commit }]);
    }
    made.keys.lock();
    const keys = await d.unlock("bob", { password: "bob's password 1" });
    await d.putRecord(keys, "bob-notes", "b1", "bob's own note");
    await d.putRecord(keys, "ann-notes", "a1", "ann's note");
    const out = { before: keys.groups() };
    const annRing = keys.ring("ann-notes");
    keys.lockGroup("ann-notes");
    out.groups = keys.groups();
    out.lockedGroups = keys.lockedGroups();
    out.groupLocked = [keys.groupLocked("ann-notes"), keys.groupLocked("bob-notes")];
    out.ringCleared = annRing.gdk(1) === undefined && annRing.newest() === undefined;
    out.read = await h.code(() => d.getRecord(keys, "ann-notes", "a1"));
    out.write = await h.code(() => d.putRecord(keys, "ann-notes", "a2", "written while locked"));
    out.groupKeys = await h.code(() => d.groupKeys(keys, "ann-notes"));
    out.a2 = (await d.recordIds("ann-notes")).includes("a2");
    // The other group reads and writes on.
    await d.putRecord(keys, "bob-notes", "b2", "bob's second note");
    out.bob = [h.text(await d.getRecord(keys, "bob-notes", "b1")), h.text(await d.getRecord(keys, "bob-notes", "b2"))];
    // A sync brings a record of the locked group, written elsewhere: stored, encrypted, still locked.
    const fromAnn = sdk.encodeRecord(await sdk.sealRecordRaw(gdks["ann-notes"], "a3", "ann wrote this while bob's group was locked"));
    const pushed = [];
    const transport = {
      pushBundle: async () => {},
      reportConsumedCode: async () => {},
      pushRecords: async (g, rs) => void pushed.push(g + ":" + rs.length),
      fetchEnrolments: async () => [{ group: "bob-notes", pins: [] }, { group: "ann-notes", pins: [] }],
      pullBundle: async () => null,
      pullRecords: async (g) => (g === "ann-notes" ? { records: [fromAnn], cursor: "1" } : { records: [], cursor: "1" }),
    };
    out.sync = await d.sync(transport, "bob");
    out.pushed = pushed.sort();
    out.annIds = (await d.recordIds("ann-notes")).sort();
    out.readSynced = await h.code(() => d.getRecord(keys, "ann-notes", "a3"));
    // Device keys made again (the next background round) keep it shut.
    const dk = await d.unlockDevice(keys.lockedGroups());
    out.deviceGroups = dk.groups();
    out.deviceLocked = dk.lockedGroups();
    out.deviceRead = await h.code(() => d.getRecord(dk, "ann-notes", "a1"));
    out.deviceBob = h.text(await d.getRecord(dk, "bob-notes", "b2"));
    // unlockGroup opens that group alone, with the member key the keys hold.
    await d.unlockGroup(keys, "ann-notes");
    out.reopened = keys.groups();
    out.lockedAfter = keys.lockedGroups();
    out.ann = [h.text(await d.getRecord(keys, "ann-notes", "a1")), h.text(await d.getRecord(keys, "ann-notes", "a3"))];
    await d.putRecord(keys, "ann-notes", "a4", "written after opening again");
    out.a4 = h.text(await d.getRecord(keys, "ann-notes", "a4"));
    out.deviceStill = dk.lockedGroups();
    await d.unlockGroup(dk, "ann-notes");
    out.deviceAnn = h.text(await d.getRecord(dk, "ann-notes", "a3"));
    // Refusals.
    out.unknown = await h.code(() => d.unlockGroup(keys, "nobody-notes"));
    keys.lockGroup("nobody-notes");
    out.unknownLocked = keys.lockedGroups();
    keys.lock();
    out.afterLock = await h.code(() => d.unlockGroup(keys, "ann-notes"));
    out.lockGroupAfterLock = await h.code(async () => keys.lockGroup("bob-notes"));
    out.groupLockedAfterLock = keys.groupLocked("bob-notes");
    // A user without a member slot in a group: not-enrolled, and the group stays locked.
    const carl = await d.createUser("carl", "carl-keys", "carl's password 1");
    carl.keys.lockGroup("ann-notes");
    out.carl = await h.code(() => d.unlockGroup(carl.keys, "ann-notes"));
    out.carlLocked = carl.keys.lockedGroups();
    dk.lock();
    d.close();
    return out;
  });
  assert.deepEqual(r.before, ["ann-notes", "bob-notes"]);
  assert.deepEqual(r.groups, ["bob-notes"], "the locked group is no longer among the open ones");
  assert.deepEqual(r.lockedGroups, ["ann-notes"]);
  assert.deepEqual(r.groupLocked, [true, false]);
  assert.equal(r.ringCleared, true, "the keyring held before the lock holds no GDK any more");
  assert.equal(r.read, "locked");
  assert.equal(r.write, "locked");
  assert.equal(r.groupKeys, "locked", "groupKeys does not open a locked group's slots again");
  assert.equal(r.a2, false, "a refused write stores nothing");
  assert.deepEqual(r.bob, ["bob's own note", "bob's second note"]);
  assert.deepEqual(r.sync, { reports: 0, records: 3, groups: 2 });
  assert.deepEqual(r.pushed, ["ann-notes:1", "bob-notes:2"], "the locked group's record written before the lock is pushed");
  assert.deepEqual(r.annIds, ["a1", "a3"], "the locked group's records arrive by sync");
  assert.equal(r.readSynced, "locked");
  assert.deepEqual(r.deviceGroups, ["bob-notes"], "unlockDevice does not open a group named locked");
  assert.deepEqual(r.deviceLocked, ["ann-notes"]);
  assert.equal(r.deviceRead, "locked");
  assert.equal(r.deviceBob, "bob's second note");
  assert.deepEqual(r.reopened, ["ann-notes", "bob-notes"]);
  assert.deepEqual(r.lockedAfter, []);
  assert.deepEqual(r.ann, ["ann's note", "ann wrote this while bob's group was locked"]);
  assert.equal(r.a4, "written after opening again");
  assert.deepEqual(r.deviceStill, ["ann-notes"], "opening a group in one set of keys leaves the other's locked");
  assert.equal(r.deviceAnn, "ann wrote this while bob's group was locked", "device keys open it again with the device key");
  assert.equal(r.unknown, "not-enrolled");
  assert.deepEqual(r.unknownLocked, ["nobody-notes"], "a group never held can be locked");
  assert.equal(r.afterLock, "locked");
  assert.equal(r.lockGroupAfterLock, "locked");
  assert.equal(r.groupLockedAfterLock, true);
  assert.equal(r.carl, "not-enrolled");
  assert.deepEqual(r.carlLocked, ["ann-notes"], "a group that does not open stays locked");
});
