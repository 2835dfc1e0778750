// @escrowd/device: the device side of escrowd's key bundle format v2
// (docs/FORMAT.md) and the device key hierarchy of docs/DEVICE.md.

export { FORMAT_VERSION } from "./version.js";
export { type Bytes, hex, unhex } from "./bytes.js";
export { DeviceError, MESSAGES, FORMAT_CODES, DEVICE_CODES, codeOf, type ErrorCode, type FormatCode, type DeviceCode } from "./errors.js";
export { parseCode, type ParsedCode } from "./unlockcode.js";
export { encodeBase64 as toB64, decodeBase64 as b64 } from "./strictjson.js";
export {
  type Slot, type Bundle, type SealedRecord, type Kind, type Suite, type Input,
  parseSlot, parseBundle, parseRecord, encodeSlot, encodeBundle, encodeRecord, prfInput, recordAAD,
  MAX_SLOT_SIZE, MAX_BUNDLE_SIZE, MAX_SLOTS, MAX_RECORD_SIZE, MAX_ITERATIONS, MIN_PASSWORD_ITERATIONS, MIN_UNLOCK_ITERATIONS,
} from "./format.js";
export {
  GDK, type Want, type Opened, type To, type PRF, type PrivateKey, type P256Pair, type SlotInput, type OpenedRecord,
  newGDK, openPublic, openUnlock, openPassword, openPasskey, openChain, pickUnlock,
  sealPublic, sealPassword, sealPasskey, sealChain, sealRecord, sealRecordRaw, sealRecordUnder, openRecord, openRecordUnder,
} from "./gdk.js";
export { Keyring } from "./keyring.js";
export {
  Device, UnlockedKeys, type RecordKeys, recordKeysOf, type Recovery, type Secret, type PasskeyPRF, type DeviceOptions, type EscrowKey, type NewUser, type UserEnrolment,
  MEMBER_KEY_RECORD, DEFAULT_MAX_ITERATIONS,
} from "./device.js";
export { type Transport, type ConsumedCode, type Enrolment } from "./transport.js";
export { createPasskey, passkeyPRF, prfOf } from "./webauthn.js";
export * from "./state/index.js";
export {
  DeviceSession, type SessionOptions, type SessionSecret, type RecoveryStep, type DeviceHandle, type GroupHandle, groupCodec, deviceCodec,
} from "./session.js";
