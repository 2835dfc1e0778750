// The codecs and the share check, bundled for session_codec.test.mjs.
export { groupCodec, deviceCodec } from "../src/session.js";
export { assertShareable } from "../src/state/share.js";
