// Sign-up in two steps (Device.createUser without the escrow key, then
// addEscrowSlot), run on the package itself in Debian's Chromium: real
// IndexedDB and WebCrypto, one fresh profile, each case in its own
// database. Until the escrow slot is added the key group's bundle is handed
// out by nothing and pushed by nothing ("no-escrow"); a bad escrow key,
// locked keys and a second escrow slot are refused with nothing stored.
// A missing Chromium or playwright-core fails the test.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { sdkPage } from "./sdk_page.mjs";

let page, close;

before(async () => {
  ({ page, close } = await sdkPage("enrol"));
  // Helpers in the page: a fresh device per case, an escrow key pair, and
  // the code of a call that must fail.
  await page.evaluate(() => {
    let n = 0;
    window.h = {
      device: (name) => window.sdk.Device.open({ name: name ?? "enrol-" + ++n, deviceId: "dev-" + n }),
      escrowPair: async () => {
        const kp = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]);
        return { kp, key: { spki: new Uint8Array(await crypto.subtle.exportKey("spki", kp.publicKey)), suite: "ecdh-p256", version: 1 } };
      },
      code: async (f) => {
        try {
          await f();
          return "";
        } catch (e) {
          return e instanceof window.sdk.DeviceError ? e.code : "not a DeviceError: " + e;
        }
      },
      kinds: (b) => window.sdk.parseBundle(b).slots.map((s) => s.kind).sort().join(","),
      recorder: () => {
        const pushed = [];
        return {
          pushed,
          transport: {
            pushBundle: async (g, b) => void pushed.push([g, b]),
            reportConsumedCode: async () => {},
            pushRecords: async () => {},
            fetchEnrolments: async () => [],
            pullBundle: async () => null,
            pullRecords: async () => ({ records: [] }),
          },
        };
      },
    };
  });
});

after(async () => {
  await close?.();
});

test("createUser without the escrow key: the account exists, its bundle is handed out by nothing until addEscrowSlot", async () => {
  const r = await page.evaluate(async () => {
    const { h } = window;
    const d = await h.device();
    const made = await d.createUser("ann", "ann-keys", "ann's password 1");
    const out = { hasBundle: "bundle" in made, hasEscrowSlot: "escrowSlot" in made, member: made.memberPublic.length, record: typeof made.memberRecord };
    out.memberPublic = window.sdk.hex(await made.keys.memberPublicKey()) === window.sdk.hex(made.memberPublic);
    out.before = await d.enrolment("ann");
    out.bundleBefore = await h.code(() => d.keyGroupBundle("ann"));
    out.setPasswordBefore = await h.code(() => d.setPassword(made.keys, "another password 2"));
    const rec = h.recorder();
    out.flushed = await d.flush(rec.transport);
    out.pushedBefore = rec.pushed.length;
    // The user key opens with the password while the escrow slot is missing:
    // a sign-up interrupted here is finished after an unlock.
    made.keys.lock();
    const keys = await d.unlock("ann", { password: "ann's password 1" });
    out.memberPublicUnlocked = window.sdk.hex(await keys.memberPublicKey()) === window.sdk.hex(made.memberPublic);
    out.memberPublicLocked = await h.code(() => made.keys.memberPublicKey());
    const { kp, key } = await h.escrowPair();
    const added = await d.addEscrowSlot(keys, key);
    out.after = await d.enrolment("ann");
    out.kinds = h.kinds(added.bundle);
    out.same = (await d.keyGroupBundle("ann")) === added.bundle;
    // The escrow slot opens with the escrow private key to the user key whose commitment was pinned.
    const opened = await window.sdk.openPublic(added.escrowSlot, { group: "ann-keys" }, { privateKey: kp.privateKey, publicKey: kp.publicKey });
    out.commit = window.sdk.hex(opened.gdk.commit) === window.sdk.hex(made.commit);
    out.second = await h.code(() => d.addEscrowSlot(keys, key));
    out.kindsAfterSecond = h.kinds(await d.keyGroupBundle("ann"));
    const b = await d.setPassword(keys, "another password 2");
    out.kindsAfterPassword = h.kinds(b);
    out.flushedAfter = await d.flush(rec.transport);
    out.pushedAfter = rec.pushed.map(([g, x]) => g + " " + h.kinds(x));
    d.close();
    return out;
  });
  assert.equal(r.memberPublic, true, "memberPublicKey is the member key createUser made");
  assert.equal(r.memberPublicUnlocked, true, "and the one a password unlock opens");
  assert.equal(r.memberPublicLocked, "locked");
  assert.equal(r.hasBundle, false, "no bundle without an escrow slot");
  assert.equal(r.hasEscrowSlot, false);
  assert.ok(r.member > 0);
  assert.equal(r.record, "string");
  assert.deepEqual(r.before, { user: "ann", keyGroup: "ann-keys", escrow: false });
  assert.equal(r.bundleBefore, "no-escrow");
  assert.equal(r.setPasswordBefore, "no-escrow", "no slot is made to be pushed before the escrow slot");
  assert.equal(r.pushedBefore, 0, "flush pushes no key group without an escrow slot");
  assert.deepEqual(r.after, { user: "ann", keyGroup: "ann-keys", escrow: true });
  assert.equal(r.kinds, "escrow,password");
  assert.equal(r.same, true);
  assert.equal(r.commit, true, "the escrow slot holds the pinned user key");
  assert.equal(r.second, "has-escrow");
  assert.equal(r.kindsAfterSecond, "escrow,password", "a refused second escrow slot changes nothing");
  assert.equal(r.kindsAfterPassword, "escrow,password");
  assert.deepEqual(r.pushedAfter, ["ann-keys escrow,password"]);
});

test("addEscrowSlot refuses a bad escrow key and keys without the user key, storing nothing", async () => {
  const r = await page.evaluate(async () => {
    const { h } = window;
    const d = await h.device();
    const made = await d.createUser("bob", "bob-keys", "bob's password 1");
    const { key } = await h.escrowPair();
    const rsa = await crypto.subtle.generateKey({ name: "RSA-OAEP", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" }, true, ["wrapKey", "unwrapKey"]);
    const rsaSpki = new Uint8Array(await crypto.subtle.exportKey("spki", rsa.publicKey));
    const cases = {
      "unknown suite": { ...key, suite: "x25519" },
      "a member suite name": { ...key, suite: "aes-kw" },
      "version 0": { ...key, version: 0 },
      "version 2^32": { ...key, version: 2 ** 32 },
      "fractional version": { ...key, version: 1.5 },
      "no spki": { suite: "ecdh-p256", version: 1 },
      "empty spki": { ...key, spki: new Uint8Array(0) },
      "spki not bytes": { ...key, spki: "MFkwEwYH" },
      "garbage spki": { ...key, spki: new Uint8Array(91).fill(7) },
      "an RSA key as ecdh-p256": { ...key, spki: rsaSpki },
      "a P-256 key as rsa-oaep-sha256": { ...key, suite: "rsa-oaep-sha256" },
      "not an object": null,
    };
    const out = {};
    for (const [name, k] of Object.entries(cases)) out[name] = await h.code(() => d.addEscrowSlot(made.keys, k));
    out.createUserBad = await h.code(() => d.createUser("carl", "carl-keys", "carl's password 1", { ...key, suite: "x25519" }));
    out.carl = await h.code(() => d.enrolment("carl"));
    out.afterBad = await d.enrolment("bob");
    const device = await d.unlockDevice();
    out.deviceKeys = await h.code(() => d.addEscrowSlot(device, key));
    out.deviceMember = await h.code(() => device.memberPublicKey());
    made.keys.lock();
    out.locked = await h.code(() => d.addEscrowSlot(made.keys, key));
    out.afterLocked = await d.enrolment("bob");
    out.unknownUser = await h.code(() => d.enrolment("nobody"));
    out.unknownBundle = await h.code(() => d.keyGroupBundle("nobody"));
    // An RSA escrow key of the suite it names is taken.
    const keys = await d.unlock("bob", { password: "bob's password 1" });
    const ok = await d.addEscrowSlot(keys, { spki: rsaSpki, suite: "rsa-oaep-sha256", version: 3 });
    const slot = window.sdk.parseBundle(ok.bundle).slots.find((s) => s.kind === "escrow");
    out.rsa = slot.suite + " v" + slot.key_version;
    d.close();
    return out;
  });
  const want = {
    "unknown suite": "suite", "a member suite name": "suite", "version 0": "range", "version 2^32": "range", "fractional version": "range",
    "no spki": "type", "empty spki": "type", "spki not bytes": "type", "garbage spki": "point", "an RSA key as ecdh-p256": "point",
    "a P-256 key as rsa-oaep-sha256": "point", "not an object": "type",
  };
  for (const [name, code] of Object.entries(want)) assert.equal(r[name], code, name);
  assert.equal(r.createUserBad, "suite", "createUser checks the escrow key before making anything");
  assert.equal(r.carl, "not-enrolled", "a refused createUser stores no user");
  assert.equal(r.afterBad.escrow, false, "a refused escrow key stores nothing");
  assert.equal(r.deviceKeys, "locked", "device-key keys hold no user key");
  assert.equal(r.deviceMember, "locked", "nor a member key");
  assert.equal(r.locked, "locked");
  assert.equal(r.afterLocked.escrow, false);
  assert.equal(r.unknownUser, "not-enrolled");
  assert.equal(r.unknownBundle, "not-enrolled");
  assert.equal(r.rsa, "rsa-oaep-sha256 v3");
});

test("a sign-up interrupted before the escrow slot is seen after a reload and finished after an unlock", async () => {
  await page.evaluate(async () => {
    const d = await window.h.device("enrol-reload");
    await d.createUser("dora", "dora-keys", "dora's password 1");
    d.close();
  });
  await page.reload();
  await page.waitForFunction(() => window.ready === true);
  const r = await page.evaluate(async () => {
    const d = await window.sdk.Device.open({ name: "enrol-reload" });
    const out = { before: await d.enrolment("dora") };
    const kp = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
    const key = { spki: new Uint8Array(await crypto.subtle.exportKey("spki", kp.publicKey)), suite: "ecdh-p256", version: 1 };
    const keys = await d.unlock("dora", { password: "dora's password 1" });
    const { bundle } = await d.addEscrowSlot(keys, key);
    out.after = await d.enrolment("dora");
    out.kinds = window.sdk.parseBundle(bundle).slots.map((s) => s.kind).sort().join(",");
    // The one-step form is unchanged: createUser with the escrow key returns the complete bundle.
    const d2 = await window.sdk.Device.open({ name: "enrol-onestep", deviceId: "dev-one" });
    const made = await d2.createUser("eve", "eve-keys", "eve's password 1", key);
    out.oneStep = { kinds: window.sdk.parseBundle(made.bundle).slots.map((s) => s.kind).sort().join(","), escrow: (await d2.enrolment("eve")).escrow, same: (await d2.keyGroupBundle("eve")) === made.bundle };
    d.close();
    d2.close();
    return out;
  });
  assert.equal(r.before.escrow, false);
  assert.equal(r.after.escrow, true);
  assert.equal(r.kinds, "escrow,password");
  assert.deepEqual(r.oneStep, { kinds: "escrow,password", escrow: true, same: true });
});

test("opening without a device id neither enrols nor brings back a deleted database", async () => {
  const r = await page.evaluate(async () => {
    const names = async () => (await indexedDB.databases()).map((d) => d.name);
    const codeOf = async (f) => { try { await f(); return "opened"; } catch (e) { return e.code ?? String(e); } };
    const out = {};
    // Never made: refused, and no database is left behind.
    out.never = await codeOf(() => window.sdk.Device.open({ name: "open-never" }));
    out.neverListed = (await names()).includes("open-never");
    // Made, then deleted (a logout): a service worker's open after it
    // does not create it again.
    const d = await window.sdk.Device.open({ name: "open-deleted", deviceId: "dev-del" });
    d.close();
    await new Promise((ok, ko) => { const q = indexedDB.deleteDatabase("open-deleted"); q.onsuccess = ok; q.onerror = ko; });
    out.deleted = await codeOf(() => window.sdk.Device.open({ name: "open-deleted" }));
    out.deletedListed = (await names()).includes("open-deleted");
    // An enrolled device opens without its id.
    const e = await window.sdk.Device.open({ name: "open-enrolled", deviceId: "dev-en" });
    e.close();
    out.enrolled = await codeOf(async () => (await window.sdk.Device.open({ name: "open-enrolled" })).close());
    return out;
  });
  assert.deepEqual(r, { never: "not-enrolled", neverListed: false, deleted: "not-enrolled", deletedListed: false, enrolled: "opened" });
});
