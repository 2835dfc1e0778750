// Run by sign_test.go in node: the PWA's signer and Backend client against
// the Go sync backend at process.argv[2]. Prints one JSON object: what the
// backend answered, and a signed request for the Go verifier.
import { Backend, BackendError } from "../src/transport.js";
import { type KeyStore, type StoredKey, Signer, b64 } from "../src/sign.js";

const base = process.argv[2]!;
const memory = (): KeyStore => {
  let k: StoredKey | undefined;
  return { get: async () => k, put: async (v) => void (k = v) };
};
const spki = async () => {
  const k = (await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"])) as CryptoKeyPair;
  return new Uint8Array(await crypto.subtle.exportKey("spki", k.publicKey));
};
const status = async (p: Promise<unknown>) => {
  try {
    await p;
    return "ok";
  } catch (e) {
    if (e instanceof BackendError) return e.status + " " + e.code;
    throw e;
  }
};

const store = memory();
const signer = await Signer.load(store, "ann-phone");
const again = await Signer.load(store);
const api = new Backend(base, signer);
const out: Record<string, unknown> = {};
out.reloaded = again.device === signer.device && b64(await again.publicKey()) === b64(await signer.publicKey());
out.extractable = signer.extractable;
out.create = await status(api.createAccount("ann", await spki(), await signer.publicKey(), await spki()));
out.groups = await api.groups();
out.notifications = await api.notifications(5);
// Another key claiming the same device id is refused.
const impostor = new Backend(base, await Signer.load(memory(), "ann-phone"));
out.impostor = await status(impostor.groups());
// A request whose signed URI is not the one sent is refused.
const skew = new Backend(base, signer, (url, init) => fetch(String(url) + "?after=1", init));
out.otherURI = await status(skew.call("GET", "/v1/notifications"));

const body = new TextEncoder().encode('{"version":0,"record":"e30="}');
const uri = "/v1/groups/ann-notes/records/note-1";
out.vector = { sign_key: b64(await signer.publicKey()), method: "PUT", uri, body: new TextDecoder().decode(body), headers: await signer.headers("PUT", uri, body) };
const wrap = await spki();
const sk = await spki();
out.approval = { account: "ann", device: "ann-laptop", sign_key: b64(sk), wrap_key: b64(wrap), signature: b64(await signer.approve("ann", "ann-laptop", sk, wrap)) };
console.log(JSON.stringify(out));
