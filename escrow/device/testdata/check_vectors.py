# An independent check of vectors.json with Python's hashlib, hmac and the
# `cryptography` package, written from docs/FORMAT.md (format v2) and
# sharing no code with escrowd: it recomputes the commitments, the derived
# keys and every intermediate value of the positive vectors, opens them,
# and decrypts the records. (The negative vectors need a full decoder; the
# Go and browser devices run those.)
#
#   python3 escrow/device/testdata/check_vectors.py [vectors.json]
import base64, hashlib, hmac, json, os, struct, sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "vectors.json")
v = json.load(open(path, encoding="utf-8"))
H = bytes.fromhex
b64 = base64.b64decode
u32 = lambda n: struct.pack(">I", n)
lp8 = lambda b: struct.pack(">B", len(b)) + b
lp16 = lambda b: struct.pack(">H", len(b)) + b

def dk(key, label):
    e = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return e.update(label) + e.finalize()

def label(name):
    return ("escrowd v2 " + name).encode().ljust(32, b"\0")

def commitment(group, version, gdk):
    return hashlib.sha256(b"escrowd v2 gdk commitment\0" + lp16(group.encode()) + u32(version) + gdk).digest()

def message(s):
    kdf, unlock = s.get("kdf", {}), s.get("unlock", {})
    f = lambda k: b64(s[k]) if k in s else b""
    return (b"escrowd v2 slot\0" + lp8(s["kind"].encode()) + lp8(s["suite"].encode()) + lp16(s["group"].encode())
            + u32(s["gdk_version"]) + u32(s["key_version"]) + lp16(s.get("id", "").encode()) + lp16(f("credential"))
            + lp8(f("epk")) + lp8(b64(kdf["salt"]) if "salt" in kdf else b"") + u32(kdf.get("iterations", 0))
            + u32(unlock.get("epoch", 0)) + u32(unlock.get("index", 0)) + lp8(f("check"))
            + lp8(f("commit")) + lp16(f("wrapped")))

def check_value(k):
    return hmac.new(k, b"escrowd v2 key check", hashlib.sha256).digest()[:8]

def key(name):
    return serialization.load_der_private_key(H(v["keys"][name]), None)

assert v["format"] == 2
group = v["group"]
gdks = {int(n): H(g) for n, g in v["gdks"].items()}
for n, g in gdks.items():
    assert v["commits"][str(n)] == commitment(group, n, g).hex(), "commits"
    d = v["derived"][str(n)]
    assert d == {"record": dk(g, label("record key")).hex(), "chain": dk(g, label("chain key")).hex(),
                 "bind": dk(g, label("bind key")).hex()}, "derived"

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
for p in v["positive"]:
    s, o, im = json.loads(p["slot"]), p["open"], p["intermediate"]
    gdk = gdks[p["gdk_version"]]
    assert p["gdk"] == gdk.hex() and s["gdk_version"] == p["gdk_version"] and s["group"] == p["want"]["group"]
    assert s.get("id", "") == p["want"]["id"]
    got = {}
    k = None
    if s["suite"] == "ecdh-p256":
        priv = key(o["key"])
        epk = b64(s["epk"])
        rpk = priv.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        z = priv.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), epk))
        info = hashlib.sha256(b"escrowd v2 ecdh-p256\0" + epk + rpk).digest()
        k = dk(z, info)
        got.update(z=z.hex(), info=info.hex())
    elif s["suite"].startswith("rsa-oaep-"):
        h = hashes.SHA1() if s["suite"] == "rsa-oaep-sha1" else hashes.SHA256()
        priv = key(o["key"])
        assert priv.key_size == (3072 if s["kind"] == "escrow" else 2048)
        pt = priv.decrypt(b64(s["wrapped"]), padding.OAEP(padding.MGF1(h), h, None))
        assert pt == gdk, p["name"]
    elif s["kind"] == "unlock":
        typed = "".join(c for c in o["code"].upper() if c not in "- ")
        secret = typed[:15].translate(str.maketrans("ILO", "110")).encode()
        assert len(typed) == 16 and all(c in ALPHABET for c in secret.decode())
        assert ALPHABET.index(secret.decode()[0]) == s["unlock"]["index"]
        k = hashlib.pbkdf2_hmac("sha256", secret, b64(s["kdf"]["salt"]), s["kdf"]["iterations"], 32)
        got["secret"] = secret.hex()
    elif s["kind"] == "password":
        secret = o["password"].encode("utf-8")
        k = hashlib.pbkdf2_hmac("sha256", secret, b64(s["kdf"]["salt"]), s["kdf"]["iterations"], 32)
        got["secret"] = secret.hex()
    elif s["kind"] == "passkey-prf":
        salt = b64(s["kdf"]["salt"])
        assert o["prf_input"] == (b"escrowd v2 passkey-prf\0" + salt).hex()
        k = HKDF(hashes.SHA256(), 32, salt, b"escrowd v2 passkey-prf").derive(H(o["prf"]))
    elif s["kind"] == "chain":
        k = H(v["derived"][str(o["chain_with"])]["chain"])
        assert s["key_version"] == o["chain_with"] == s["gdk_version"] + 1
    if k is not None:
        got["key"] = k.hex()
        assert aes_key_unwrap(k, b64(s["wrapped"])) == gdk, p["name"]
    if "check" in s:
        got["check"] = check_value(k).hex()
        assert b64(s["check"]) == check_value(k), p["name"]
    m = message(s)
    bind = hmac.new(dk(gdk, label("bind key")), m, hashlib.sha256).digest()
    got.update(message=m.hex(), bind=bind.hex())
    assert b64(s["bind"]) == bind and b64(s["commit"]) == commitment(s["group"], s["gdk_version"], gdk), p["name"]
    assert got == im, (p["name"], got, im)

for r in v["records"]:
    rec = json.loads(r["record"])
    aad = b"escrowd v2 record\0" + lp16(rec["group"].encode()) + lp16(rec["id"].encode()) + u32(rec["gdk_version"])
    assert r["aad"] == aad.hex() and rec["gdk_version"] == r["gdk_version"]
    k = dk(gdks[r["gdk_version"]], label("record key"))
    assert r["key"] == k.hex()
    assert AESGCM(k).decrypt(b64(rec["iv"]), b64(rec["ct"]), aad).decode("utf-8") == r["plaintext"], r["name"]
    try:
        AESGCM(gdks[r["gdk_version"]]).decrypt(b64(rec["iv"]), b64(rec["ct"]), aad)
        raise AssertionError("the GDK itself decrypts a record")
    except Exception as e:
        if isinstance(e, AssertionError):
            raise

print("ok: %d positive vectors and %d records agree" % (len(v["positive"]), len(v["records"])))
