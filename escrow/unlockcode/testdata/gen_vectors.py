#!/usr/bin/env python3
"""Generate vectors.json for unlock codes, format v2 (docs/FORMAT.md,
"Unlock codes"), independently of the Go (escrow/unlockcode) and JavaScript
(web/unlockcode.js) implementations, which both run the file.

Written from the specification only: big-integer bit extraction instead of
byte windows, GF(32) arithmetic by polynomial multiplication, the check
symbol found by search, PBKDF2 and HMAC from Python's hashlib/hmac.

Deterministic: no randomness outside random.Random with fixed seeds, so
running it again gives the same file.

    python3 escrow/unlockcode/testdata/gen_vectors.py > escrow/unlockcode/testdata/vectors.json
"""

import hashlib
import hmac
import json
import random
import struct
import sys

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SYMBOLS = 16
DATA_BITS = 70
MAX_INDEX = 31
MIN_ITERATIONS = 1 << 16

# The normative separator set: removed wherever they occur.
SEPARATORS = [
    "\u0009",  # TAB
    "\u0020",  # SPACE
    "\u00a0",  # NO-BREAK SPACE
    "\u2007",  # FIGURE SPACE
    "\u202f",  # NARROW NO-BREAK SPACE
    "\u3000",  # IDEOGRAPHIC SPACE
    "\u002d",  # HYPHEN-MINUS
    "\u2010",  # HYPHEN
    "\u2011",  # NON-BREAKING HYPHEN
    "\u2012",  # FIGURE DASH
    "\u2013",  # EN DASH
    "\u2014",  # EM DASH
    "\u2015",  # HORIZONTAL BAR
    "\u2212",  # MINUS SIGN
    "\ufe58",  # SMALL EM DASH
    "\ufe63",  # SMALL HYPHEN-MINUS
    "\uff0d",  # FULLWIDTH HYPHEN-MINUS
]
LOOKALIKES = {"I": "1", "L": "1", "O": "0"}


# ---- GF(32) = GF(2)[x]/(x^5 + x^2 + 1) and the Damm check ------------------

MODULUS = 0b100101


def gf_mul(a, b):
    """Carry-less multiply, then reduce modulo x^5 + x^2 + 1."""
    p = 0
    for i in range(5):
        if (b >> i) & 1:
            p ^= a << i
    for bit in range(9, 4, -1):
        if (p >> bit) & 1:
            p ^= MODULUS << (bit - 5)
    return p


X = 0b00010  # the polynomial x


def damm(values):
    acc = 0
    for s in values:
        acc = gf_mul(X, acc) ^ s
    return acc


def check_symbol(values):
    found = [c for c in range(32) if damm(values + [c]) == 0]
    assert len(found) == 1, found
    return found[0]


# ---- codes ------------------------------------------------------------------


def symbols_from_material(index, material):
    assert 0 <= index <= MAX_INDEX and len(material) * 8 >= DATA_BITS
    n = int.from_bytes(material, "big") >> (len(material) * 8 - DATA_BITS)
    data = [(n >> (DATA_BITS - 5 * (i + 1))) & 31 for i in range(DATA_BITS // 5)]
    return [index] + data


def display(values15):
    s = "".join(ALPHABET[v] for v in values15 + [check_symbol(values15)])
    return "-".join(s[i:i + 4] for i in range(0, SYMBOLS, 4))


def code_from_text(data15):
    """A code from 15 chosen symbols (for negative vectors)."""
    return display([ALPHABET.index(ch) for ch in data15])


# ---- normalisation, written from the spec, to validate every vector ---------


class NotACode(Exception):
    pass


class Mistyped(Exception):
    pass


def normalise(typed):
    out = []
    for ch in typed:
        if ch in SEPARATORS:
            continue
        if "a" <= ch <= "z":
            ch = chr(ord(ch) - 32)
        ch = LOOKALIKES.get(ch, ch)
        if ch not in ALPHABET:
            raise NotACode()
        out.append(ALPHABET.index(ch))
    if len(out) != SYMBOLS:
        raise NotACode()
    if damm(out) != 0:
        raise Mistyped()
    return out


def outcome(typed):
    try:
        v = normalise(typed)
    except NotACode:
        return "not-a-code"
    except Mistyped:
        return "mistyped"
    return display(v[:15])


# ---- HSM material -----------------------------------------------------------


def code_message(group, user, epoch, index, nonce):
    """The daemon's HMAC input; nonce is the epoch's nonce (16 bytes)."""
    g, u = group.encode(), user.encode()
    assert len(nonce) == 16
    return (b"escrowd unlock code v2\x00" + struct.pack(">H", len(g)) + g +
            struct.pack(">H", len(u)) + u + struct.pack(">II", epoch, index) +
            struct.pack(">B", len(nonce)) + nonce)


def h(label, n=32):
    return hashlib.sha256(label.encode()).digest()[:n]


# ---- messy typings ----------------------------------------------------------


def messy(code, seed):
    """A valid typing: lower case, look-alikes, separators from the set."""
    rnd = random.Random(seed)
    syms = code.replace("-", "")
    out = []
    for i, ch in enumerate(syms):
        if i and i % 4 == 0:
            out.append(rnd.choice(SEPARATORS[1:]) * rnd.choice([1, 1, 2]))
        elif i and rnd.random() < 0.15:
            out.append(rnd.choice(SEPARATORS))
        if ch == "1":
            ch = rnd.choice("IiLl")
        elif ch == "0":
            ch = rnd.choice("Oo")
        elif rnd.random() < 0.5:
            ch = ch.lower()
        out.append(ch)
    return rnd.choice(["", " ", "\t", "\u00a0"]) + "".join(out) + rnd.choice(["", " ", "\u3000"])


# ---- vectors ----------------------------------------------------------------


def code_vector(index, material, salt, iterations, seed, hsm=None):
    values = symbols_from_material(index, material)
    code = display(values)
    secret = "".join(ALPHABET[v] for v in values)
    typed = messy(code, seed)
    assert outcome(typed) == code and outcome(code) == code
    assert iterations >= MIN_ITERATIONS
    v = {
        "index": index,
        "material": material.hex(),
        "code": code,
        "typed": typed,
        "secret": secret,
        "salt": salt.hex(),
        "iterations": iterations,
        "key": hashlib.pbkdf2_hmac("sha256", secret.encode("ascii"), salt, iterations, 32).hex(),
    }
    if hsm:
        v["hmac"] = hsm
    return v


def hsm_vector(unlock_key, group, user, epoch, index, nonce, salt, iterations, seed):
    msg = code_message(group, user, epoch, index, nonce)
    material = hmac.new(unlock_key, msg, hashlib.sha256).digest()
    return code_vector(index, material, salt, iterations, seed, {
        "unlock_key": unlock_key.hex(), "group": group, "user": user,
        "epoch": epoch, "nonce": nonce.hex(), "message": msg.hex(),
    })


def main():
    uk = h("escrowd test unlock key")
    codes = [
        code_vector(0, bytes(9), bytes(16), 65536, 1),
        code_vector(31, b"\xff" * 32, b"\xa5" * 16, 100000, 2),
        code_vector(3, bytes(range(9)), bytes(range(16)), 65536, 3),
        code_vector(1, b"0123456789", h("salt 4", 16), 65536, 4),
        code_vector(16, h("material 5"), h("salt 5", 16), 70000, 5),
        hsm_vector(uk, "g-eng", "bob", 1, 0, h("nonce 1", 16), h("salt 6", 16), 65536, 6),
        hsm_vector(uk, "g-eng", "bob", 1, 1, h("nonce 1", 16), h("salt 7", 16), 65536, 7),
        hsm_vector(uk, "g-eng", "bob", 2, 19, h("nonce 2", 16), h("salt 8", 16), 65536, 8),
        hsm_vector(uk, "grüppe", "zoë@example.org", 4294967295, 7, h("nonce 3", 16), h("salt 9", 16), 65536, 9),
        # Epoch 1 issued again under another nonce (a store restored from a
        # backup): index 0 gets other material than the first vector's.
        hsm_vector(uk, "g-eng", "bob", 1, 0, h("nonce 4", 16), h("salt 6", 16), 65536, 10),
    ]

    # One code holding A, K, S, V, 0 and 1, to substitute look-alikes into.
    base = code_from_text("5AKS10VX7M2QD4H")
    flat = base.replace("-", "")
    ex = code_from_text("3K2M9QXD4HRTW6P")  # the example in docs/FORMAT.md

    typings = []  # other valid typings: {"typed", "code"}

    def typing(t, code, why):
        assert outcome(t) == code, (t, outcome(t))
        typings.append({"typed": t, "code": code, "why": why})

    for sep in SEPARATORS:
        name = "U+%04X" % ord(sep)
        typing(sep.join(base.split("-")), base, "groups joined by " + name)
        typing(sep + flat[:7] + sep * 2 + flat[7:] + sep, base, name + " at both ends and doubled inside")
    typing(flat, base, "no separators")
    typing(base.lower(), base, "lower case")
    typing("".join(c.lower() if i % 2 else c for i, c in enumerate(base)), base, "mixed case")
    typing(base.replace("1", "I"), base, "I for 1")
    typing(base.replace("1", "i"), base, "i for 1")
    typing(base.replace("1", "L"), base, "L for 1")
    typing(base.replace("1", "l"), base, "l for 1")
    typing(base.replace("0", "O"), base, "O for 0")
    typing(base.replace("0", "o"), base, "o for 0")
    zero = display([0] * 15)
    typing(zero.replace("0", "O"), zero, "all O")
    one = display([1] * 15)
    typing(one.replace("1", "l").lower(), one, "all l")
    typing(" - ".join(ex.split("-")), ex, "spaced dashes")
    typing("\t".join(ex.split("-")), ex, "tabs")
    typing("\u2013".join(ex.lower().split("-")), ex, "en dashes, lower case")
    typing(" ".join(flat), base, "a space between every symbol")

    invalid = []

    def bad(t, err, why):
        assert outcome(t) == err, (t, outcome(t), err)
        invalid.append({"typed": t, "error": err, "why": why})

    # Shape.
    bad("", "not-a-code", "empty")
    bad(" - \u2013 \u3000", "not-a-code", "separators only")
    bad(base[:-1], "not-a-code", "15 symbols")
    bad(base + "0", "not-a-code", "17 symbols")
    bad(base + base, "not-a-code", "32 symbols")
    bad(flat[:15], "not-a-code", "check symbol missing")
    # Characters outside the separator set are refused, not removed.
    for ch, name in [
        ("\u00ad", "U+00AD SOFT HYPHEN"), ("\u2043", "U+2043 HYPHEN BULLET"),
        ("\u200b", "U+200B ZERO WIDTH SPACE"), ("\u2009", "U+2009 THIN SPACE"),
        ("\u2002", "U+2002 EN SPACE"), ("\ufeff", "U+FEFF BOM"),
        ("\u2e3a", "U+2E3A TWO-EM DASH"), ("\u30fc", "U+30FC KATAKANA-HIRAGANA PROLONGED SOUND MARK"),
        ("\u2796", "U+2796 HEAVY MINUS SIGN"), ("\u00b7", "U+00B7 MIDDLE DOT"),
        ("\n", "LF"), ("\r", "CR"), ("\u000b", "VT"), ("\u0000", "NUL"),
        ("_", "low line"), (".", "full stop"), ("/", "solidus"), ("*", "asterisk"),
        ("+", "plus"), ("\ud800", "lone surrogate"),
    ]:
        bad(base[:4] + ch + base[5:], "not-a-code", name + " between groups")
        bad(base + ch, "not-a-code", name + " at the end")
    # Look-alikes outside ASCII are not folded: each substitutes a symbol of
    # the code, so a folding implementation would accept it.
    for sym, ch, name in [
        ("A", "\uff21", "U+FF21 FULLWIDTH A for A"), ("A", "\uff41", "U+FF41 FULLWIDTH a for A"),
        ("A", "\u0391", "U+0391 GREEK ALPHA for A"), ("A", "\u0410", "U+0410 CYRILLIC A for A"),
        ("K", "\u212a", "U+212A KELVIN SIGN for K"), ("S", "\u017f", "U+017F LONG S for S"),
        ("1", "\u0131", "U+0131 DOTLESS i for 1"), ("1", "\u0130", "U+0130 DOTTED I for 1"),
        ("1", "\uff4c", "U+FF4C FULLWIDTH l for 1"), ("1", "\u00b9", "U+00B9 SUPERSCRIPT ONE for 1"),
        ("1", "\u0399", "U+0399 GREEK IOTA for 1"), ("0", "\uff10", "U+FF10 FULLWIDTH 0 for 0"),
        ("0", "\u041e", "U+041E CYRILLIC O for 0"), ("0", "\u0660", "U+0660 ARABIC-INDIC ZERO for 0"),
        ("0", "\u00d8", "U+00D8 O WITH STROKE for 0"), ("V", "U", "U for V"), ("V", "u", "u for V"),
        ("A", "\u00e1", "U+00E1 a acute for A"),
    ]:
        i = base.index(sym)
        bad(base[:i] + ch + base[i + 1:], "not-a-code", name)
    swapped = base[:1] + base[2] + base[1] + base[3:]
    assert outcome(swapped) == "mistyped"
    bad(swapped[:4] + "*" + swapped[5:], "not-a-code", "a bad character wins over a bad check symbol")
    # Mistyped: the shape is right, the check symbol is not.
    bad(flat[:15] + ALPHABET[(ALPHABET.index(flat[15]) + 1) % 32], "mistyped", "check symbol wrong")
    bad(ALPHABET[(ALPHABET.index(flat[0]) + 1) % 32] + base[1:], "mistyped", "index symbol wrong")
    bad(swapped, "mistyped", "symbols 2 and 3 swapped")
    bad(base[:3] + base[5] + "-" + base[3] + base[6:], "mistyped", "swap across a group boundary")
    bad(base.replace("Q", "9"), "mistyped", "9 for Q")
    bad(ex.lower().replace("-", "\u2014").replace("w", "v"), "mistyped", "v for W, em dashes, lower case")
    bad(base.replace("0", "8"), "mistyped", "8 for 0")
    bad(display([0] * 15).replace("0", "O").replace("O", "Q", 1), "mistyped", "Q for O")

    out = {
        "comment": "Unlock code format v2 (docs/FORMAT.md, Unlock codes). Generated by "
                   "gen_vectors.py; run by escrow/unlockcode (Go) and web/unlockcode.js.",
        "separators": ["U+%04X" % ord(s) for s in SEPARATORS],
        "codes": codes,
        "typings": typings,
        "invalid": invalid,
    }
    json.dump(out, sys.stdout, indent=1, ensure_ascii=True)
    sys.stdout.write("\n")
    print("%d codes, %d typings, %d invalid; docs example %s" % (len(codes), len(typings), len(invalid), ex),
          file=sys.stderr)


if __name__ == "__main__":
    main()
