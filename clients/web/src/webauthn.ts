// Passkeys with the WebAuthn PRF extension: create a credential that can
// give a PRF output, and evaluate it for the device's passkey-prf slots
// with one touch (evalByCredential). The output never leaves memory.

import { type Bytes, copy, random } from "./bytes.js";
import { DeviceError, fail } from "./errors.js";
import type { PasskeyPRF } from "./device.js";

export interface PasskeyOptions {
  /** The relying party id; the page's host name if absent. */
  rpId?: string;
  rpName?: string;
  user: { id: Uint8Array; name: string; displayName?: string };
}

/** createPasskey makes a resident credential with user verification and the PRF extension; "no-prf" if the authenticator lacks it. */
export async function createPasskey(o: PasskeyOptions): Promise<Bytes> {
  const cred = (await navigator.credentials.create({
    publicKey: {
      rp: { id: o.rpId ?? location.hostname, name: o.rpName ?? location.hostname },
      user: { id: copy(o.user.id), name: o.user.name, displayName: o.user.displayName ?? o.user.name },
      challenge: random(32),
      pubKeyCredParams: [{ type: "public-key", alg: -7 }, { type: "public-key", alg: -257 }],
      authenticatorSelection: { residentKey: "required", userVerification: "required" },
      extensions: { prf: {} },
    },
  })) as PublicKeyCredential | null;
  if (!cred) fail("no-prf", "no credential was made");
  if (!cred.getClientExtensionResults().prf?.enabled) fail("no-prf", "the authenticator does not support PRF");
  return new Uint8Array(cred.rawId);
}

/** prfOf evaluates one credential's PRF for one input (sealing a new passkey slot). */
export function prfOf(credential: Uint8Array, rpId?: string): (input: Bytes) => Promise<Bytes> {
  return async (input) => (await passkeyPRF(rpId)([{ credential: copy(credential), input }])).output;
}

/** passkeyPRF asks the authenticator once, offering every slot's credential with its own PRF input. */
export function passkeyPRF(rpId?: string): (r: { credential: Bytes; input: Bytes }[]) => Promise<{ credential: Bytes; output: Bytes }> {
  const f: PasskeyPRF = async (requests) => {
    const evalByCredential: Record<string, { first: Bytes }> = {};
    for (const r of requests) evalByCredential[b64url(r.credential)] = { first: r.input };
    let a: PublicKeyCredential | null;
    try {
      a = (await navigator.credentials.get({
        publicKey: {
          challenge: random(32),
          rpId: rpId ?? location.hostname,
          allowCredentials: requests.map((r) => ({ type: "public-key" as const, id: r.credential })),
          userVerification: "required",
          extensions: { prf: { evalByCredential } },
        },
      })) as PublicKeyCredential | null;
    } catch (e) {
      throw new DeviceError("wrong-secret", e instanceof DOMException ? e.name : "the passkey was not used", { cause: e });
    }
    const out = a?.getClientExtensionResults().prf?.results?.first;
    if (!a || !out) fail("no-prf", "the authenticator gave no PRF output");
    return { credential: new Uint8Array(a.rawId), output: copy(out instanceof ArrayBuffer ? new Uint8Array(out) : new Uint8Array(out.buffer, out.byteOffset, out.byteLength)) };
  };
  return f as (r: { credential: Bytes; input: Bytes }[]) => Promise<{ credential: Bytes; output: Bytes }>;
}

function b64url(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += String.fromCharCode(x);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
