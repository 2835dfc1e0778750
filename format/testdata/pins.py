# Independent pins for format_test.go, computed with Python's hashlib, hmac
# and struct from the byte layouts in docs/FORMAT.md and the doc comments of
# format/format.go, and nothing of escrowd. Run: python3 format/testdata/pins.py
# The outputs are pasted into format/format_test.go (pythonPins).
import hashlib, hmac, json, struct

def lp8(b): assert len(b) < 256; return struct.pack(">B", len(b)) + b
def lp16(b): assert len(b) < 65536; return struct.pack(">H", len(b)) + b
u32 = lambda n: struct.pack(">I", n)

out = {}
key0 = bytes(range(32))

# Commitment: SHA-256("escrowd v2 gdk commitment" || 0x00 || u16be(len group) || group || u32be(gdk_version) || GDK)
out["commitment"] = hashlib.sha256(b"escrowd v2 gdk commitment\x00" + lp16(b"family-42") + u32(2) + key0).hexdigest()

# ECDHInfo: SHA-256("escrowd v2 ecdh-p256" || 0x00 || epk || rpk)
epk = b"\x04" + bytes([0x11]) * 64
rpk = b"\x04" + bytes([0x22]) * 64
out["ecdh_info"] = hashlib.sha256(b"escrowd v2 ecdh-p256\x00" + epk + rpk).hexdigest()

# Message of a context with every field set.
full = (b"escrowd v2 slot\x00" + lp8(b"unlock") + lp8(b"pbkdf2-sha256-aes-kw") + lp16(b"family-42")
        + u32(2) + u32(3) + lp16(b"bob") + lp16(b"\x01\x02\x03") + lp8(epk) + lp8(bytes([0x22]) * 16)
        + u32(65536) + u32(7) + u32(3) + lp8(bytes([0x33]) * 8) + lp8(bytes([0x44]) * 32) + lp16(bytes([0x55]) * 40))
out["message_full"] = full.hex()
# Message of an escrow context: no id, credential, epk, kdf, unlock or check.
escrow = (b"escrowd v2 slot\x00" + lp8(b"escrow") + lp8(b"rsa-oaep-sha256") + lp16(b"g") + u32(1) + u32(1)
          + lp16(b"") + lp16(b"") + lp8(b"") + lp8(b"") + u32(0) + u32(0) + u32(0) + lp8(b"")
          + lp8(bytes([0x44]) * 32) + lp16(bytes([0x66]) * 256))
out["message_escrow"] = escrow.hex()

# PRFInput: "escrowd v2 passkey-prf" || 0x00 || salt
out["prf_input"] = (b"escrowd v2 passkey-prf\x00" + bytes(range(255, 223, -1))).hex()

# CheckValue: HMAC-SHA256(key, "escrowd v2 key check")[:8]
out["check_zero"] = hmac.new(bytes(32), b"escrowd v2 key check", hashlib.sha256).digest()[:8].hex()
out["check_key0"] = hmac.new(key0, b"escrowd v2 key check", hashlib.sha256).digest()[:8].hex()

# RecordAAD: "escrowd v2 record" || 0x00 || u16be(len group) || group || u16be(len id) || id || u32be(gdk_version)
out["record_aad"] = (b"escrowd v2 record\x00" + lp16(b"family-42") + lp16(b"note-1") + u32(2)).hex()

# CodeMessage: "escrowd unlock code v2" || 0x00 || u16be(len group) || group || u16be(len user) || user || u32be(epoch) || u32be(index)
#              || u8(len nonce) || nonce   (the epoch's nonce: 16 bytes)
out["code_message"] = (b"escrowd unlock code v2\x00" + lp16(b"family-42") + lp16(b"bob") + u32(7) + u32(31)
                       + lp8(bytes(range(0x70, 0x80)))).hex()

# PasswordKey: RFC 7914 section 11 (first 32 bytes) and the NFC password of webcrypto_pins.mjs.
out["rfc7914_1"] = hashlib.pbkdf2_hmac("sha256", b"passwd", b"salt", 1, 32).hex()
out["rfc7914_2"] = hashlib.pbkdf2_hmac("sha256", b"Password", b"NaCl", 80000, 32).hex()
out["password_key"] = hashlib.pbkdf2_hmac("sha256", "Grüße, Jürgen".encode(), bytes(range(16)), 1000, 32).hex()

print(json.dumps(out, indent=1))
