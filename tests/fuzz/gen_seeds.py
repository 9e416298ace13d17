#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/<target>/ and tests/fuzz/fuzz_jwt_keys.h.

Seeds are meaningful inputs the fuzzer mutates from: every client message type, the
Go service's message shapes, notify bodies, and JWTs of every algorithm family. The
RSA and EC keys that sign the JWT seeds are generated fresh by openssl on every run and only
their public halves are kept (in fuzz_jwt_keys.h), so rerunning this script rewrites both the
JWT seeds and the header together. Usage: tests/fuzz/gen_seeds.py (from anywhere).
"""
import base64
import hashlib
import hmac
import json
import os
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
SECRET = b"fuzz-secret-0123456789abcdef0123456789"  # as in fuzz_jwt.c
NOW = 1700000000  # the fuzz_jwt.c clock
EXP = NOW + 3600


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def js(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def deep(n, inner="1"):
    return "[" * n + inner + "]" * n


# ---- client messages (fuzz_proto) ----
LONG_ROOM = "r" * 129
PROTO = {
    "join": js({"type": "join", "payload": {"room": "order-7"}}),
    "join_since": js({"type": "join", "payload": {"room": "order-7", "since": 123}}),
    "join_since_str": js({"type": "join", "payload": {"room": "seller-3", "since": "42"}}),
    "go_subscribe": js({"type": "subscribe", "data": {"channel": "x"}}),
    "go_unsubscribe": js({"type": "unsubscribe", "data": {"channel": "x"}}),
    "action_subscribe": js({"action": "subscribe", "filters": ["parking", "parking-15"]}),
    "action_auth": js({"action": "auth", "token": "eyJhbGciOiJIUzI1NiJ9.e30.c2ln"}),
    "leave": js({"type": "leave", "payload": {"room": "seller-3"}}),
    "broadcast": js({"type": "broadcast", "payload": {"room": "chat-9", "body": {
        "text": "hi \u00e9 \"q\" \\ \n\t/", "n": [1, 2.5, -0.0, 1e300, True, None]}}}),
    "broadcast_go": js({"type": "broadcast", "data": {"channel": "chat-9", "message": "hello"}}),
    "broadcast_null": js({"type": "broadcast", "payload": {"room": "chat-9", "body": None}}),
    "broadcast_escapes": '{"type":"broadcast","payload":{"room":"c","body":'
                         '"\\u0000\\u001f\\ud83d\\ude00\\u2028\\\\\\"\\/"}}',
    "auth": js({"type": "auth", "payload": {"token": "eyJhbGciOiJIUzI1NiJ9.e30.c2ln"}}),
    "ping": js({"type": "ping"}),
    "ping_crlf": js({"type": "ping"}) + "\r\n",
    "trailing": js({"type": "ping"}) + " x",
    "deep": '{"type":"broadcast","payload":{"room":"r","body":' + deep(13) + "}}",
    "too_deep": '{"type":"broadcast","payload":{"room":"r","body":' + deep(20) + "}}",
    "long_room": js({"type": "join", "payload": {"room": LONG_ROOM}}),
    "long_body": js({"type": "broadcast", "payload": {"room": "r", "body": "x" * 4000}}),
    "bad_type": js({"type": 1, "payload": {}}),
    "not_object": '["join"]',
    "nan_body": '{"type":"broadcast","payload":{"room":"r","body":[NaN,-Infinity,1e400]}}',
    # Regressions: inputs fuzz_proto found (tests/unit/test_regress_fuzz.c tests each).
    "regress-nul-token": '{"type":"auth","payload":{"token":"\\u0000E\\u0EEeyl"}}',
    "regress-leading-zero": '{"type":"broadcast","payload":{"room":"chat-9","body":{"text":'
                            '"hi \u00e9 \\"q\\" \\\\ \\n\\t/","n":[1,2.5,00.0,1e+300,true,null]}}}',
}

# ---- notify bodies (fuzz_notify) ----
NOTIFY = {
    "room": js({"event": "order_updated", "room": "order-7",
                "data": {"id_order": 7, "status": "paid"}}),
    "user_int": js({"event": "message", "user_id": 42, "data": None}),
    "user_str": js({"event": "message", "user_id": "abc"}),
    "persist": js({"event": "order_created", "room": "admins", "persist": True, "data": {}}),
    "persist_false": js({"event": "x", "room": "admins", "persist": False, "data": [1, 2, 3]}),
    "no_room": js({"event": "x", "data": {}}),
    "no_event": js({"room": "order-7"}),
    "trailing": js({"event": "x", "room": "r"}) + "}",
    "ws_trailing": js({"event": "x", "room": "r"}) + " \n",
    "deep": '{"event":"x","room":"r","data":' + deep(14) + "}",
    "too_deep": '{"event":"x","room":"r","data":' + deep(20) + "}",
    "long_room": js({"event": "x", "room": LONG_ROOM}),
    "long_user": js({"event": "x", "user_id": "u" * 125}),
    "nul_room": '{"event":"x","room":"order-7\\u0000junk"}',
    "unicode": '{"event":"caf\\u00e9 \\ud83d\\ude00","room":"r","data":"\\/\\b\\f"}',
    "bad_utf8": b'{"event":"\xff\xfe","room":"r"}',
    "long_data": js({"event": "x", "room": "r", "data": {"k": "v" * 3000}}),
    # Regressions: inputs fuzz_notify found (tests/unit/test_regress_fuzz.c has each as a test).
    "regress-trailing-nul": b'{"event":"messafalse\n\n\n\n\nge","user_id":"abc"}' + b"\0" * 22,
    "regress-overlong-utf8": b'{"event":"\xc0\x80","room":"r"}',
    "regress-surrogate-utf8": b'{"event":"x","room":"r","data":"\xed\xa0\x80"}',
    "regress-nul-event": '{"event":"order\\u0000_updated","room":"order-7"}',
    "regress-nan": '{"event":"ud","room":"0d5516.6er-b7","data":{"us":NaN}}',
    # The in-place scanner (src/jscan.c) at its edges: the nesting limit either side, what
    # json-c's strict mode took and RFC 8259 does not, json-c's key and integer rules.
    "jscan_depth16": '{"event":"x","room":"r","data":' + deep(14, "[]") + "}",
    "jscan_depth17": '{"event":"x","room":"r","data":' + deep(15, "[]") + "}",
    "jscan_depth16_objects": '{"event":"x","room":"r","data":' + '{"a":' * 14 + "1" + "}" * 15,
    "jscan_depth17_objects": '{"event":"x","room":"r","data":' + '{"a":' * 15 + "1" + "}" * 16,
    "jscan_single_quote": "{'event':\"x\",'room':\"r\"}",
    "jscan_raw_tab": '{"event":"a\tb","room":"r"}',  # a raw tab inside the string
    "jscan_leading_zero": '{"event":"x","user_id":-01}',
    "jscan_surrogates": '{"event":"\\ud800x","room":"r",'
                        '"data":["\\udc00","\\ud800\\ud800\\udc00",{"a" : "\\ud83d\\ude00"}]}',
    "jscan_dup_keys": '{"event":"a","event":"b","room":"x","room":"r","data":1,'
                      '"data":{ "k" : [ 1 , 2.50 , "a b" ] },"persist":true,"persist":false}',
    "jscan_nul_key": '{"event\\u0000x":"e","room":"r"}',
    "jscan_escaped_key": '{"\\u0065vent":"e","r\\u006fom":"r"}',
    "jscan_user_saturated": '{"event":"e","user_id":-99999999999999999999}',
    "jscan_user_minus_zero": '{"event":"e","user_id":-0}',
    "jscan_trailing_x": '{"event":"e","room":"r"} x',
    "jscan_scalar": "1",
}


# ---- JWTs (fuzz_jwt) ----
def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def signing_input(header, claims):
    return b64u(js(header).encode()) + "." + b64u(js(claims).encode())


def hs(header, claims, key=SECRET):
    si = signing_input(header, claims)
    dig = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
    mac = hmac.new(key, si.encode(), dig[header["alg"]]).digest()
    return si + "." + b64u(mac)


def der_to_raw(der, size):
    """ECDSA DER SEQUENCE{r, s} -> the r||s form JWS uses."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        out += der[i + 2:i + 2 + n].lstrip(b"\0").rjust(size, b"\0")
        i += 2 + n
    return out


def pk_sign(keyfile, header, claims, digest, ec_size=0):
    si = signing_input(header, claims)
    sig = subprocess.run(["openssl", "dgst", "-" + digest, "-sign", keyfile],
                         input=si.encode(), capture_output=True, check=True).stdout
    if ec_size:
        sig = der_to_raw(sig, ec_size)
    return si + "." + b64u(sig)


def c_string(pem):
    return "\n".join('\t"%s\\n"' % line for line in pem.strip().splitlines())


def jwt_seeds(tmp):
    rsa, ec = os.path.join(tmp, "rsa.pem"), os.path.join(tmp, "ec.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", rsa], check=True, capture_output=True)
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-out", ec], check=True, capture_output=True)
    pub = {k: subprocess.run(["openssl", "pkey", "-in", f, "-pubout"], check=True,
                             capture_output=True, text=True).stdout
           for k, f in (("rsa", rsa), ("ec", ec))}

    base = {"sub": "42", "role": "admin", "exp": EXP, "iat": NOW - 10}
    rs_claims = dict(base, iss="https://auth.example", aud=["other", "roomcast"])
    seeds = {
        "hs256": hs({"alg": "HS256", "typ": "JWT"}, base),
        "hs384_seller": hs({"alg": "HS384"}, {"user_id": 7, "role": "Seller", "reference_id": 3,
                                              "rooms": ["order-*", "chat-9"], "exp": EXP}),
        "hs512_client": hs({"alg": "HS512", "typ": "jwt"},
                           {"id": 9, "role": "client", "id_client": "9", "exp": EXP + 0.5,
                            "nbf": NOW - 1, "iat": NOW, "extra": {"a": [1, None]}}),
        "hs256_unicode": hs({"alg": "HS256"}, {"sub": "\u00e9\U0001F600", "exp": EXP,
                                               "role": None, "seller_id": None}),
        "hs256_expired": hs({"alg": "HS256"}, dict(base, exp=NOW - 100)),
        "hs256_no_exp": hs({"alg": "HS256"}, {"sub": "1"}),
        "hs256_bad_sig": hs({"alg": "HS256"}, base, key=b"wrong-secret"),
        "hs256_crit": hs({"alg": "HS256", "crit": ["exp"]}, base),
        "hs256_typ": hs({"alg": "HS256", "typ": "at+jwt"}, base),
        "none": signing_input({"alg": "none"}, base) + ".",
        "none_sig": signing_input({"alg": "none"}, base) + ".c2ln",
        "rs256": pk_sign(rsa, {"alg": "RS256", "typ": "JWT"}, rs_claims, "sha256"),
        "rs512": pk_sign(rsa, {"alg": "RS512"}, dict(rs_claims, aud="roomcast"), "sha512"),
        "rs256_as_hs256": hs({"alg": "HS256"}, rs_claims, key=pub["rsa"].encode()),
        "es256": pk_sign(ec, {"alg": "ES256"}, base, "sha256", ec_size=32),
        "two_parts": b64u(b'{"alg":"HS256"}') + "." + b64u(js(base).encode()),
        "alg_list": "HS256,HS384, rs256 ,ES512",
        "alg_list_none": "HS256,none",
    }
    for name, tok in seeds.items():
        write("jwt", name, tok)

    with open(os.path.join(HERE, "fuzz_jwt_keys.h"), "w") as f:
        f.write("/* Generated by tests/fuzz/gen_seeds.py: public halves of the throwaway keys that\n"
                " * signed the JWT seed corpus. Do not edit; rerun the script. */\n")
        f.write("#define FUZZ_RSA_PEM \\\n%s\n" % c_string(pub["rsa"]).replace('\\n"\n', '\\n" \\\n'))
        f.write("#define FUZZ_EC_PEM \\\n%s\n" % c_string(pub["ec"]).replace('\\n"\n', '\\n" \\\n'))


# ---- room names, patterns and join/leave programs (fuzz_room) ----
ROOM = {
    "name": "order-7",
    "name_max": "n" * 128,
    "name_long": "n" * 129,
    "pattern": b"order-*\0order-7",
    "pattern_multi": b"*-*:*\0seller-3:x",
    "pattern_backtrack": b"a*b*c*d\0aXbYbZcXcd",
    "pattern_miss": b"seller-*\0order-7",
    "pattern_stars": b"**a**\0bab",
    # one byte per operation: verb << 5 | member << 3 | room
    "ops_join_leave": bytes([0x00, 0x08, 0x10, 0x18, 0x01, 0x60, 0x68, 0x70, 0x78]),
    "ops_swap": bytes([0x00, 0x08, 0x10, 0x18, 0x60, 0xA8, 0xB0, 0x78, 0xC8, 0xD8]),
    "ops_leave_all": bytes([0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0xC0, 0xE0]),
}

if __name__ == "__main__":
    for n, d in PROTO.items():
        write("proto", n, d)
    for n, d in NOTIFY.items():
        write("notify", n, d)
    for n, d in ROOM.items():
        write("room", n, d)
    with tempfile.TemporaryDirectory() as tmp:
        jwt_seeds(tmp)
    print("seeds written to", CORPUS)
