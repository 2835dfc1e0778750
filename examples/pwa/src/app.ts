// The demo PWA: notes encrypted on the device under each group's key,
// synced through the reference sync backend, unlocked offline with a
// password or a passkey, and recovered with an unlock code read out by
// support. Every key comes from the device SDK (clients/web).

import {
  Device, DeviceError, type EscrowKey, type Secret, MEMBER_KEY_RECORD, type UnlockedKeys, codeOf, createPasskey, encodeBundle, newGDK, passkeyPRF, prfOf, sealPublic,
} from "../../../clients/web/src/index.js";
import { DB_NAME, PERIOD_MS, SYNC_TAG, type Config, type Session, config, openSession } from "./shared.js";
import { type EnrolRequest, decodeApproval, decodeEnrolRequest, parsePasted } from "./decode.js";
import { Signer, b64, hex, idbKeyStore, wipeKeyStore } from "./sign.js";
import { Backend, BackendError, SyncTransport, bundleText, pins } from "./transport.js";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const input = (id: string) => $<HTMLInputElement>(id);
const keyGroupOf = (account: string) => account + "-keys";

let cfg: Config;
let session: Session | null = null;
/** keys: the user's, from a password, passkey or code; device: every group this device has a device slot of. */
let keys: UnlockedKeys | null = null;
let deviceKeys: UnlockedKeys | null = null;
/** Groups the user locked on their own (Lock this group): none of their keys is held until Open; a full lock clears it. */
const shut = new Set<string>();
let current: string | null = null;
let editing: string | null = null;
let syncing: Promise<void> | null = null;
/** A failed round is tried again after retryMs, doubled each time up to the 15-minute period. */
let retryMs = 1000;
let retry: ReturnType<typeof setTimeout> | null = null;

// ---- the screens ----------------------------------------------------------------

function show(screen: "signup" | "login" | "recover" | "main"): void {
  for (const s of ["signup", "login", "recover", "main"]) $(s).hidden = s !== screen;
  $("enrol").hidden = screen !== "signup";
  $("lock").hidden = $("sync-now").hidden = $("logout").hidden = screen !== "main";
  if (screen === "login") $("login-account").textContent = session?.account ?? "";
}

function error(e: unknown): void {
  const el = $("error");
  if (e === null) {
    el.hidden = true;
    return;
  }
  el.hidden = false;
  el.dataset.code = e instanceof DeviceError ? codeOf(e) : e instanceof BackendError ? e.code : "error";
  el.textContent = e instanceof Error ? e.message : String(e);
}

async function busy(f: () => Promise<void>): Promise<void> {
  error(null);
  try {
    await f();
  } catch (e) {
    error(e);
  }
}

// ---- sync status ------------------------------------------------------------------

async function status(state: "idle" | "syncing" | "synced" | "offline" | "error", detail = ""): Promise<void> {
  const el = $("sync");
  const waiting = session ? (await session.device.pending()).length : 0;
  el.dataset.state = state;
  el.dataset.pending = String(waiting);
  const words = { idle: "not synced", syncing: "syncing…", synced: "synced", offline: "offline", error: "sync failed" }[state];
  el.textContent = words + (waiting ? ` · ${waiting} report${waiting > 1 ? "s" : ""} waiting` : "") + (detail ? " · " + detail : "");
  el.title = detail;
}

/**
 * sync runs one round with the backend, one at a time: a round asked for
 * while one runs (a note saved mid-round) runs right after it, so nothing
 * waits for the next timer. data-round on the status is the start time of
 * the last round that succeeded.
 */
let again = false;
function sync(): Promise<void> {
  if (syncing) {
    again = true;
    return syncing;
  }
  syncing = (async () => {
    const s = session;
    if (!s) return;
    if (!navigator.onLine) return status("offline");
    const started = Date.now();
    await status("syncing");
    try {
      s.transport.take();
      await s.device.sync(s.transport, s.account);
      const unsent = s.transport.take();
      if (unsent.length) throw new Error("slots made here were not sent: " + unsent.join("; "));
      for (const [g, owner] of s.transport.owners) remember(g, owner);
      await notifications(s);
      await reopen();
      $("sync").dataset.round = String(started);
      await status("synced", new Date().toLocaleTimeString());
      retryMs = 1000;
    } catch (e) {
      const offline = e instanceof TypeError || (e instanceof DeviceError && e.code === "offline") || !navigator.onLine;
      await status(offline ? "offline" : "error", offline ? "" : e instanceof Error ? e.message : String(e));
      // The "online" event can come before requests go through again.
      if (navigator.onLine && retry === null) {
        retry = setTimeout(() => {
          retry = null;
          void sync();
        }, retryMs);
        retryMs = Math.min(retryMs * 2, PERIOD_MS);
      }
    }
    await render();
  })().finally(() => {
    syncing = null;
    if (again) {
      again = false;
      void sync();
    }
  });
  return syncing;
}

/** notifications shows the backend's notices: support revealed an unlock code for this user. */
async function notifications(s: Session): Promise<void> {
  const seen = Number(localStorage.getItem("escrowd-pwa-notice") ?? "0");
  const list = await s.backend.notifications(seen);
  for (const n of list) {
    const li = document.createElement("li");
    li.dataset.kind = n.kind;
    li.textContent = n.kind === "code_revealed"
      ? `Support revealed an unlock code for you${n.ticket ? " on ticket " + n.ticket : ""} (${n.group}, ${new Date(n.time).toLocaleString()}). If you did not ask for it, tell support.`
      : `${n.kind} (${n.group})`;
    $("notices").append(li);
    localStorage.setItem("escrowd-pwa-notice", String(n.sequence));
  }
}

// ---- keys -----------------------------------------------------------------------

/** reopen opens, with the device key, the groups that arrived since the unlock (a new group, a new GDK). */
async function reopen(): Promise<void> {
  if (!session || !keys || keys.locked) return;
  // A group locked on its own is not opened with the device key either.
  const d = await session.device.unlockDevice(shut);
  if (!keys || keys.locked) {
    d.lock(); // locked meanwhile
    return;
  }
  for (const g of shut) d.lockGroup(g); // locked while the device slots were opened
  deviceKeys?.lock();
  deviceKeys = d;
}

/**
 * lockGroup locks one group: its keys are dropped from the user's keys and
 * the device's (the keyrings cleared), its notes leave the page, and it
 * cannot be written until opened again. The other groups read, write and
 * sync on; sync still fetches this group's records, which stay encrypted.
 */
function lockGroup(group: string): void {
  if (!keys || keys.locked) return;
  shut.add(group);
  keys.lockGroup(group);
  if (deviceKeys && !deviceKeys.locked) deviceKeys.lockGroup(group);
  if (current === group) {
    editing = null;
    $<HTMLTextAreaElement>("note-text").value = "";
  }
  void render();
}

/**
 * openGroup opens one locked group again, and only it, with the member key
 * the unlocked session still holds (and the device key, for the device's
 * own keys): no password, as one password unlock opens every group. A
 * group whose slots open in neither stays locked.
 */
async function openGroup(group: string): Promise<void> {
  const s = session!;
  if (!keys || keys.locked) throw new DeviceError("locked", "unlock first");
  let opened = false;
  for (const k of [keys, deviceKeys]) {
    if (!k || k.locked || !k.groupLocked(group)) continue;
    try {
      await s.device.unlockGroup(k, group);
      opened = true;
    } catch (e) {
      if (codeOf(e) !== "not-enrolled") throw e;
    }
  }
  if (!opened) throw new DeviceError("not-enrolled", "no key of " + group + " opens on this device: sync first");
  shut.delete(group);
  await render();
}

/**
 * ringFor returns the keys that hold group: the user's, else the device's.
 * When this device's storage names a newer GDK than the keys hold (a
 * surrogate left and the GDK rotated since the unlock), the group's slots
 * are opened again first, so new notes are written under the new GDK and
 * older ones are read through its chain slot.
 */
async function ringFor(group: string): Promise<UnlockedKeys | null> {
  const s = session;
  if (!s || shut.has(group)) return null;
  for (const k of [keys, deviceKeys]) {
    if (!k || k.locked || !k.groups().includes(group)) continue;
    try {
      await s.device.groupKeys(k, group);
    } catch (e) {
      // No slot of the newer GDK is for this user or device: the keys as
      // held still read the older notes. Any other failure (a GDK neither
      // pinned nor chained, a damaged slot) is shown.
      if (codeOf(e) !== "not-enrolled") throw e;
    }
    return k;
  }
  return null;
}

async function unlocked(k: UnlockedKeys): Promise<void> {
  keys = k;
  await reopen();
  show("main");
  await render();
  void sync();
}

function lock(): void {
  keys?.lock();
  deviceKeys?.lock();
  keys = deviceKeys = null;
  shut.clear();
  current = editing = null;
  input("li-password").value = "";
  failure(null);
  show("login");
}

/**
 * logout removes the account from this device: the SDK's database (slots,
 * records, the device key), the signing key and the app's notes in
 * localStorage. Reports still queued are lost with it, so it refuses while
 * some wait.
 */
async function logout(): Promise<void> {
  const s = session!;
  const waiting = (await s.device.pending()).length;
  if (waiting) throw new Error(waiting + " report(s) still wait to be sent: sync before logging out");
  // No new round may start, and the one in flight ends, before the database goes.
  session = null;
  again = false;
  if (retry !== null) clearTimeout(retry);
  retry = null;
  while (syncing) await syncing;
  lock();
  tabs?.postMessage({ type: "logout" });
  await s.device.logout();
  await wipeKeyStore();
  localStorage.removeItem("escrowd-pwa-notice");
  localStorage.removeItem("escrowd-pwa-owners");
  $("notices").replaceChildren();
  show("signup");
  await status("idle");
}

// ---- sign-up ------------------------------------------------------------------------

/**
 * signup enrols this device and a new account, in the SDK's two steps:
 * createUser makes the user key, the member key and the password slot;
 * the account is created with the member key; the backend then provisions
 * the key group and relays its escrow key, and addEscrowSlot seals the
 * user key to it. Only then is there a key group bundle to upload: its
 * first bundle holds the password slot and the escrow slot, and the
 * backend adds the member and device slots and the first unlock codes.
 */
async function signup(account: string, password: string): Promise<void> {
  const deviceId = account + "-" + Array.from(crypto.getRandomValues(new Uint8Array(3)), (b) => b.toString(16).padStart(2, "0")).join("");
  const device = await Device.open({ name: DB_NAME, deviceId });
  const signer = await Signer.load(idbKeyStore(), deviceId);
  const backend = new Backend(cfg.backend, signer);
  const keyGroup = keyGroupOf(account);
  const made = await device.createUser(account, keyGroup, password);
  await backend.createAccount(account, made.memberPublic, await signer.publicKey(), await device.devicePublicKey());
  const g = await backend.createGroup(keyGroup);
  const escrow: EscrowKey = { spki: g.escrow_key.public_key, suite: g.escrow_key.suite as EscrowKey["suite"], version: g.escrow_key.version };
  const { bundle } = await device.addEscrowSlot(made.keys, escrow);
  const up = await backend.putBundle(keyGroup, g.version, bundle);
  await device.addGroup(keyGroup, bundleText(up)!, pins(up));
  await backend.putRecord(keyGroup, MEMBER_KEY_RECORD, 0, made.memberRecord);
  session = { device, signer, backend, transport: new SyncTransport(backend, account), account };
  await unlocked(made.keys);
}

/** createGroup provisions a group at the backend and uploads its first bundle: GDK 1 sealed to the group's escrow key. */
async function createGroup(name: string): Promise<void> {
  const s = session!;
  const g = await s.backend.createGroup(name);
  const gdk = await newGDK(name, 1);
  const escrow = await sealPublic("escrow", { key_version: g.escrow_key.version }, g.escrow_key.suite, g.escrow_key.public_key, gdk);
  // The backend re-wraps the GDK through escrowd to this account's member key and its devices.
  const up = await s.backend.putBundle(name, g.version, encodeBundle(name, [escrow]));
  await s.device.addGroup(name, bundleText(up)!, pins(up));
  remember(name, up.owner);
  await reopen();
  current = name;
  await render();
}

// Group owners are ids the backend hands every member: kept for the offline list.
function owners(): Record<string, string> {
  try {
    return JSON.parse(localStorage.getItem("escrowd-pwa-owners") ?? "{}") as Record<string, string>;
  } catch {
    return {};
  }
}
function remember(group: string, owner: string): void {
  localStorage.setItem("escrowd-pwa-owners", JSON.stringify({ ...owners(), [group]: owner }));
}

// ---- rendering ------------------------------------------------------------------------

/** render shows the groups and the current group's notes; keys locked meanwhile (the Lock button mid-sync) end it quietly. */
async function render(): Promise<void> {
  try {
    await draw();
  } catch (e) {
    if (e instanceof DeviceError && e.code === "locked") return;
    error(e);
  }
}

async function draw(): Promise<void> {
  if (!session || !keys || keys.locked) return;
  const s = session;
  const own = owners();
  const groups = new Set<string>([...keys.groups(), ...(deviceKeys && !deviceKeys.locked ? deviceKeys.groups() : []), ...shut]);
  groups.delete(keyGroupOf(s.account));
  const ul = $("groups");
  ul.replaceChildren();
  for (const g of [...groups].sort()) {
    const li = document.createElement("li");
    li.dataset.group = g;
    li.setAttribute("aria-current", String(g === current));
    const owner = own[g];
    li.innerHTML = "";
    li.append(g);
    if (owner && owner !== s.account) {
      const small = document.createElement("small");
      small.textContent = " surrogate for " + owner;
      li.append(small);
    }
    if (shut.has(g)) {
      li.dataset.locked = "true";
      const small = document.createElement("small");
      small.textContent = " · locked";
      li.append(small);
    }
    if (left(s, g)) {
      li.dataset.removed = "true";
      const small = document.createElement("small");
      small.textContent = " · removed";
      li.append(small);
    }
    li.onclick = () => {
      current = g;
      editing = null;
      void render();
    };
    ul.append(li);
  }
  $("group").hidden = current === null || !groups.has(current);
  if (current === null || !groups.has(current)) return failure(null);
  const locked = shut.has(current);
  $("group").dataset.locked = String(locked);
  $("group-lock").hidden = locked;
  $("group-open").hidden = !locked;
  $("note-form").hidden = locked;
  $("group-locked").hidden = !locked;
  const k = await ringFor(current);
  $("group-title").textContent = current;
  const owner = own[current];
  $("group-meta").textContent = owner ? (owner === s.account ? "your group" : "you are a surrogate for " + owner) : "";
  if (left(s, current)) $("group-meta").textContent = (owner ? owner + " removed you from this group" : "you left this group") + ": notes written since then do not reach this device";
  $("member-add").hidden = owner !== s.account;
  drawMembers(s, current, owner === s.account);
  const notes = $("notes");
  notes.replaceChildren();
  if (locked) {
    // Only the count of the records sync keeps fetching: their text stays encrypted.
    const n = (await s.device.recordIds(current)).length;
    const el = $("group-locked");
    el.dataset.records = String(n);
    el.textContent = current + " is locked: its " + n + " note" + (n === 1 ? "" : "s") + " stay encrypted on this device and sync on. Open it to read and write.";
    return failure(null);
  }
  let failed = 0;
  let failedCode = "";
  for (const id of (await s.device.recordIds(current)).sort()) {
    const li = document.createElement("li");
    li.dataset.id = id;
    try {
      const pt = k ? await s.device.getRecord(k, current, id) : undefined;
      li.textContent = pt ? new TextDecoder().decode(pt) : "(no key for this note yet)";
    } catch (e) {
      li.textContent = "(this note does not open: " + (e instanceof Error ? e.message : String(e)) + ")";
      li.dataset.error = codeOf(e);
      failed++;
      failedCode ||= codeOf(e) || "error";
    }
    li.onclick = () => {
      editing = id;
      $<HTMLTextAreaElement>("note-text").value = li.textContent ?? "";
    };
    notes.append(li);
  }
  failure(failed ? { group: current, count: failed, code: failedCode } : null);
}

async function saveNote(text: string): Promise<void> {
  const s = session!;
  const g = current!;
  if (shut.has(g)) throw new DeviceError("locked", g + " is locked: open it to write");
  const k = await ringFor(g);
  if (!k) throw new DeviceError("not-enrolled", "this device has no key of the group yet: sync first");
  const id = editing ?? "n-" + Date.now().toString(36) + Array.from(crypto.getRandomValues(new Uint8Array(3)), (b) => b.toString(16).padStart(2, "0")).join("");
  await s.device.putRecord(k, g, id, text);
  editing = null;
  $<HTMLTextAreaElement>("note-text").value = "";
  await render();
  void sync();
}

// ---- devices and surrogates -----------------------------------------------------------
//
// A second device of an account (Ann's phone, say) joins without the
// password ever leaving the first: the new device makes its keys and shows
// a request (its id and public keys); a device already enrolled, unlocked,
// signs an approval of exactly those keys and hands back the account's
// member public key; the new device sends its enrolment, signed by its own
// key, with that approval. The backend then has escrowd wrap every group's
// GDK to the new device key (device slots), so it syncs in the background
// without anyone unlocking it. Both texts travel through the user (pasted
// here; a QR code in a real app), who checks that both devices show the
// same fingerprint before approving.

let enrolling: { account: string; device: Device; signer: Signer } | null = null;

/** fingerprint is what the user compares on both devices: the first 64 bits of SHA-256 of the request's fields. */
async function fingerprint(r: EnrolRequest): Promise<string> {
  const t = ["escrowd-pwa-pairing-v1", r.account, r.device, hex(r.sign_key), hex(r.wrap_key)].join("\n");
  return hex(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(t))).slice(0, 16).match(/.{4}/g)!.join("-");
}

/** enrolStart makes this device's keys (or reuses those of an enrolment begun before a reload) and shows its request. */
async function enrolStart(account: string): Promise<void> {
  const deviceId = account + "-" + hex(crypto.getRandomValues(new Uint8Array(3)));
  const device = await Device.open({ name: DB_NAME, deviceId });
  const signer = await Signer.load(idbKeyStore(), device.deviceId);
  if (signer.device !== device.deviceId) throw new Error("this browser holds keys of two devices (" + device.deviceId + ", " + signer.device + "): log out first");
  const req = { account, device: device.deviceId, sign_key: b64(await signer.publicKey()), wrap_key: b64(await device.devicePublicKey()) };
  enrolling?.device.close();
  enrolling = { account, device, signer };
  $<HTMLTextAreaElement>("en-request").value = JSON.stringify(req);
  $("en-fingerprint").textContent = await fingerprint(decodeEnrolRequest(req));
  $("en-wait").hidden = false;
}

/** enrolFinish sends the enrolment with the pasted approval, then imports the account's key group and member key record. */
async function enrolFinish(text: string): Promise<void> {
  const e = enrolling;
  if (!e) throw new Error("ask to add this device first");
  const ap = decodeApproval(parsePasted(text));
  if (ap.account !== e.account || ap.device !== e.device.deviceId) throw new Error("this approval is for device " + ap.device + " of " + ap.account + ", not for this one");
  const backend = new Backend(cfg.backend, e.signer);
  await backend.enrolDevice(e.account, await e.signer.publicKey(), await e.device.devicePublicKey(), ap.approver, ap.approval);
  const keyGroup = keyGroupOf(e.account);
  const v = await backend.group(keyGroup);
  const b = bundleText(v);
  if (!b) throw new Error("the account's key group has no bundle at the backend");
  await e.device.addGroup(keyGroup, b, pins(v));
  const rec = await backend.record(keyGroup, MEMBER_KEY_RECORD);
  await e.device.importUser(e.account, keyGroup, rec.record, ap.member_key);
  session = { device: e.device, signer: e.signer, backend, transport: new SyncTransport(backend, e.account), account: e.account };
  enrolling = null;
  $<HTMLTextAreaElement>("en-request").value = $<HTMLTextAreaElement>("en-approval").value = "";
  $("en-wait").hidden = true;
  show("login");
  await sync();
}

/** showRequest shows the fingerprint of a pasted request, or why it does not decode, before anything is signed. */
async function showRequest(text: string): Promise<void> {
  const el = $("ap-fingerprint");
  $<HTMLTextAreaElement>("ap-approval").hidden = true;
  try {
    const r = decodeEnrolRequest(parsePasted(text));
    el.textContent = "device " + r.device + " of " + r.account + ", fingerprint " + (await fingerprint(r));
    el.dataset.fingerprint = await fingerprint(r);
  } catch (e) {
    el.textContent = text.trim() ? (e instanceof Error ? e.message : String(e)) : "";
    delete el.dataset.fingerprint;
  }
}

/** approveDevice signs the approval of the pasted request (unlocked keys only) and shows the text to hand back. */
async function approveDevice(text: string): Promise<void> {
  const s = session!;
  if (!keys || keys.locked) throw new DeviceError("locked", "unlock to approve a device");
  const r = decodeEnrolRequest(parsePasted(text));
  if (r.account !== s.account) throw new Error("this request is to join " + r.account + "; this device is " + s.account + "'s");
  const approval = await s.signer.approve(r.account, r.device, r.sign_key, r.wrap_key);
  const member = await keys.memberPublicKey();
  const out = $<HTMLTextAreaElement>("ap-approval");
  out.value = JSON.stringify({ account: r.account, device: r.device, approver: s.signer.device, approval: b64(approval), member_key: b64(member) });
  out.hidden = false;
}

/**
 * left reports whether the backend no longer lists a group this device
 * holds that another account owns: this account was removed from it. (A
 * group this account owns is never left; one it just created is listed
 * from the next round on.)
 */
function left(s: Session, group: string): boolean {
  const owner = owners()[group];
  return s.transport.listed !== null && !s.transport.listed.has(group) && owner !== undefined && owner !== s.account;
}

/** drawMembers lists the group's surrogates; an owner's device can remove each. */
function drawMembers(s: Session, group: string, owner: boolean): void {
  const ul = $("members");
  ul.replaceChildren();
  if (left(s, group)) return; // the list as last read is not this account's to see any more
  for (const m of s.transport.surrogates.get(group) ?? []) {
    const li = document.createElement("li");
    li.dataset.account = m;
    li.append("surrogate: " + m);
    if (owner) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = "Remove";
      b.onclick = () => void busy(() => removeSurrogate(group, m));
      li.append(" ", b);
    }
    ul.append(li);
  }
}

/** removeSurrogate removes a surrogate; the backend has escrowd rotate the GDK, and the next sync brings the new bundle. */
async function removeSurrogate(group: string, account: string): Promise<void> {
  const s = session!;
  const v = await s.backend.removeMember(group, account);
  s.transport.surrogates.set(group, v.surrogates);
  await sync();
}

function wireDevices(): void {
  $("en-start").onclick = () => void busy(() => enrolStart(input("en-account").value));
  $("enrol").onsubmit = (e) => {
    e.preventDefault();
    void busy(() => enrolFinish($<HTMLTextAreaElement>("en-approval").value));
  };
  $("ap-request").oninput = () => void showRequest($<HTMLTextAreaElement>("ap-request").value);
  $("approve").onsubmit = (e) => {
    e.preventDefault();
    void busy(() => approveDevice($<HTMLTextAreaElement>("ap-request").value));
  };
}

// ---- passkeys -------------------------------------------------------------------------

async function addPasskey(): Promise<void> {
  const s = session!;
  const credential = await createPasskey({ user: { id: new TextEncoder().encode(s.account), name: s.account } });
  await s.device.addPasskey(keys!, credential, prfOf(credential));
  await sync();
}

// ---- several tabs, reloads and decryption failures --------------------------------

/**
 * The app's tabs share a BroadcastChannel: a logout in one logs out the
 * others (they drop their keys, close the database being deleted, and show
 * the sign-up screen). Only the message {type: "logout"} is read.
 */
const tabs = "BroadcastChannel" in globalThis ? new BroadcastChannel("escrowd-pwa") : null;

/** UNLOCKING marks, in this tab's sessionStorage, an unlock under way: a time, nothing secret. */
const UNLOCKING = "escrowd-pwa-unlocking";

/** notice shows a message in the error line, with a code for tests and styles. */
function notice(code: string, text: string): void {
  const el = $("error");
  el.hidden = false;
  el.dataset.code = code;
  el.textContent = text;
}

/**
 * unlockWith runs one unlock, marked in sessionStorage while it runs. A
 * page reloaded in the middle of it (the marker outlives the old page)
 * starts locked and says the unlock was interrupted; an unlock writes
 * nothing, so there is nothing half-written to undo, and the user unlocks
 * again.
 */
async function unlockWith(secret: Secret): Promise<void> {
  const s = session!;
  sessionStorage.setItem(UNLOCKING, String(Date.now()));
  try {
    const k = await s.device.unlock(s.account, secret);
    // Another tab logged out meanwhile: the keys opened are dropped.
    if (session !== s) return k.lock();
    await unlocked(k);
  } finally {
    sessionStorage.removeItem(UNLOCKING);
  }
}

/** loggedOutElsewhere follows another tab's logout: keys dropped, rounds stopped, the database (being deleted there) closed. */
async function loggedOutElsewhere(): Promise<void> {
  const s = session;
  if (!s) return;
  session = null;
  again = false;
  if (retry !== null) clearTimeout(retry);
  retry = null;
  while (syncing) await syncing;
  lock();
  s.device.close();
  $("notices").replaceChildren();
  show("signup");
  await status("idle");
  notice("logged-out", "You logged out in another tab: this device's notes and keys are gone from this browser.");
}

/**
 * failure shows that notes of the open group do not decrypt (AES-GCM
 * refuses a record altered in this browser's storage or at the backend),
 * with two ways on: Retry, and Log out. null hides it.
 */
function failure(f: { group: string; count: number; code: string } | null): void {
  const el = $("failure");
  el.hidden = f === null;
  if (f === null) return;
  el.dataset.code = f.code;
  el.dataset.group = f.group;
  $("failure-text").textContent = (f.count === 1 ? "A note" : f.count + " notes") + " in " + f.group +
    " could not be decrypted: the copy was altered or damaged. Retry fetches the notes again from the server; Log out removes this account's data from this browser.";
}

/** retryFailed syncs (every round fetches each group's records afresh, replacing copies damaged here) and reads the notes again. */
async function retryFailed(): Promise<void> {
  await sync();
  await render();
}

// ---- start ---------------------------------------------------------------------------

function wire(): void {
  $("signup").onsubmit = (e) => {
    e.preventDefault();
    void busy(() => signup(input("su-account").value, input("su-password").value));
  };
  $("login").onsubmit = (e) => {
    e.preventDefault();
    void busy(() => unlockWith({ password: input("li-password").value }));
  };
  $("li-passkey").onclick = () => void busy(() => unlockWith({ prf: passkeyPRF() }));
  $("li-forgot").onclick = () => show("recover");
  $("rc-cancel").onclick = () => show("login");
  $("recover").onsubmit = (e) => {
    e.preventDefault();
    void busy(async () => {
      const s = session!;
      // The "code consumed" report is queued at once and sent when the backend answers.
      const rec = await s.device.recover(s.account, input("rc-code").value, s.transport);
      await rec.setPassword(input("rc-password").value);
      input("rc-code").value = input("rc-password").value = "";
      await unlocked(rec.keys);
    });
  };
  $("lock").onclick = lock;
  $("group-lock").onclick = () => {
    error(null);
    if (current !== null) lockGroup(current);
  };
  $("group-open").onclick = () => void busy(async () => {
    if (current !== null) await openGroup(current);
  });
  $("logout").onclick = () => void busy(logout);
  $("sync-now").onclick = () => void sync();
  $("group-new").onsubmit = (e) => {
    e.preventDefault();
    void busy(async () => {
      await createGroup(input("gn-name").value);
      input("gn-name").value = "";
    });
  };
  $("member-add").onsubmit = (e) => {
    e.preventDefault();
    void busy(async () => {
      await session!.backend.addMember(current!, input("ma-account").value);
      input("ma-account").value = "";
      await sync();
    });
  };
  $("note-form").onsubmit = (e) => {
    e.preventDefault();
    void busy(() => saveNote($<HTMLTextAreaElement>("note-text").value));
  };
  $("note-new").onclick = () => {
    editing = null;
    $<HTMLTextAreaElement>("note-text").value = "";
  };
  $("passkey-add").onclick = () => void busy(addPasskey);
  wireDevices();
  $("failure-retry").onclick = () => void busy(retryFailed);
  $("failure-logout").onclick = () => void busy(logout);
  if (tabs) tabs.onmessage = (e: MessageEvent<unknown>) => {
    const m = e.data as { type?: unknown } | null;
    if (typeof m === "object" && m !== null && m.type === "logout") void loggedOutElsewhere();
  };

  // When to sync: on open, on visibility, on "online", every 15 minutes
  // while open, and through Background Sync where the browser has it.
  addEventListener("online", () => void sync());
  addEventListener("offline", () => void status("offline"));
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") void sync();
  });
  setInterval(() => void sync(), PERIOD_MS);
  navigator.serviceWorker?.addEventListener("message", () => void sync());
}

async function registerWorker(): Promise<void> {
  if (!("serviceWorker" in navigator)) return;
  const reg = await navigator.serviceWorker.register("sw.js", { scope: "./" });
  await navigator.serviceWorker.ready;
  type SyncReg = ServiceWorkerRegistration & { sync?: { register(tag: string): Promise<void> }; periodicSync?: { register(tag: string, o: { minInterval: number }): Promise<void> } };
  const r = reg as SyncReg;
  try {
    await r.sync?.register(SYNC_TAG);
    await r.periodicSync?.register(SYNC_TAG, { minInterval: PERIOD_MS });
  } catch {
    // Periodic sync needs an installed app and the browser's consent: the page's own timers cover the rest.
  }
}

async function start(): Promise<void> {
  wire();
  cfg = await config();
  session = await openSession(cfg);
  show(session ? "login" : "signup");
  if (sessionStorage.getItem(UNLOCKING) !== null) {
    sessionStorage.removeItem(UNLOCKING);
    if (session) notice("interrupted", "Unlocking was interrupted by a reload. Nothing was changed: unlock again.");
  }
  await status(navigator.onLine ? "idle" : "offline");
  document.body.dataset.ready = "true";
  void registerWorker().catch((e) => console.warn("service worker:", e));
}

void start().catch(error);
