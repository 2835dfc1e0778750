// Signs a request as a browser device does, with WebCrypto alone (Node's
// implementation of it here), and prints the result as a test vector for
// auth_test.go: the Go backend must verify what WebCrypto signs.
//
//   node examples/syncbackend/auth/testdata/webcrypto.mjs > examples/syncbackend/auth/testdata/webcrypto.json
const { subtle } = globalThis.crypto;

const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
const b64 = (buf) => Buffer.from(buf).toString("base64");
const b64url = (buf) => Buffer.from(buf).toString("base64url");

// The device's key: the private half is not extractable.
const key = await subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
const spki = await subtle.exportKey("spki", key.publicKey);

const method = "PUT";
const uri = "/v1/groups/ann-notes/records/note-1";
const device = "ann-phone";
const time = 1764600000;
const nonce = b64url(globalThis.crypto.getRandomValues(new Uint8Array(16)));
const body = new TextEncoder().encode('{"version":0,"record":"e30="}');

const message = ["escrowd-syncbackend-v1", method, uri, device, String(time), nonce,
  hex(await subtle.digest("SHA-256", body))].join("\n");
const signature = await subtle.sign({ name: "ECDSA", hash: "SHA-256" }, key.privateKey, new TextEncoder().encode(message));

console.log(JSON.stringify({
  sign_key: b64(spki), method, uri, device, time, nonce, body: new TextDecoder().decode(body),
  headers: { "Sync-Device": device, "Sync-Time": String(time), "Sync-Nonce": nonce, "Sync-Signature": b64url(signature) },
}, null, 2));
