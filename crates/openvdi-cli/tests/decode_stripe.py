#!/usr/bin/env python3
"""An independent decoder of one stripe of an encrypted openvdi repository, written
from docs/REPOSITORY.md alone (it shares no code with openvdi).

    OPENVDI_PASSWORD=… decode_stripe.py REPO STRIPE_KEY MANIFEST_KEY OUT.bak

Writes the native .bak stream of the stripe to OUT.bak and prints the database the
(decrypted) manifest names. Codec 0 (none) only: decompressing zstd or LZ4 blocks
would need packages beyond `cryptography`.
"""
import json
import os
import struct
import sys

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def hkdf(salt, ikm, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def main():
    repo, stripe_key, manifest_key, out = sys.argv[1:5]
    password = os.environ["OPENVDI_PASSWORD"].encode()

    # §2: the config object and a password slot.
    with open(os.path.join(repo, "openvdi-config.json"), "rb") as f:
        env = json.load(f)
    assert env["format"] == 2
    body = json.loads(env["body"])
    repo_id = bytes.fromhex(body["repo_id"])
    mk = None
    for slot in body["slots"]:
        if slot["kind"] != "password":
            continue
        a = slot["argon2id"]
        kek = Argon2id(
            salt=bytes.fromhex(slot["salt"]),
            length=32,
            iterations=a["iterations"],
            lanes=a["parallelism"],
            memory_cost=a["memory_kib"],
        ).derive(password)
        ad = b"openvdi/v2/slot" + repo_id + struct.pack("<I", slot["id"])
        try:
            mk = AESGCM(kek).decrypt(bytes.fromhex(slot["nonce"]), bytes.fromhex(slot["wrapped"]), ad)
            break
        except Exception:
            continue
    if mk is None:
        sys.exit("wrong password")

    # §3: subkeys; check the config object's MAC.
    def subkey(purpose):
        return hkdf(repo_id, mk, b"openvdi/v2/" + purpose)

    h = hmac.HMAC(subkey(b"config-mac"), hashes.SHA256())
    h.update(env["body"].encode())
    h.verify(bytes.fromhex(env["mac"]))

    # §5: the manifest.
    with open(os.path.join(repo, manifest_key), "rb") as f:
        sealed = json.load(f)
    assert sealed["format"] == 3
    plain = AESGCM(subkey(b"manifest")).decrypt(
        bytes.fromhex(sealed["nonce"]),
        bytes.fromhex(sealed["ciphertext"]),
        b"openvdi/v2/manifest" + repo_id + manifest_key.encode(),
    )
    manifest = json.loads(plain)
    print("database", manifest["database"])

    # §4: the stripe. The backup id is the folder name, the index the N of stripeN.
    folder, name = stripe_key.rsplit("/", 1)
    backup_id = folder.rsplit("/", 1)[-1].encode()
    index = int(name[len("stripe"):].split(".")[0])
    with open(os.path.join(repo, stripe_key), "rb") as f:
        data = f.read()
    assert data[:8] == b"OVDISTR1" and data[9] == 2 and data[10:16] == bytes(6)
    codec = data[8]
    if codec != 0:
        sys.exit("this decoder handles codec 0 (none) only")
    salt = data[16:32]
    prefix = struct.pack("<H", len(backup_id)) + backup_id + struct.pack("<I", index)
    k = AESGCM(hkdf(salt, mk, b"openvdi/v2/stripe" + repo_id + prefix))
    ad_prefix = b"OVDIFRM2" + repo_id + prefix
    at, i, raw_total = 32, 0, 0
    with open(out, "wb") as w:
        while True:
            raw_len, stored_len, _crc, zero = struct.unpack_from("<IIII", data, at)
            assert zero == 0
            stored = data[at + 16 : at + 16 + stored_len]
            at += 16 + stored_len
            final = raw_len == 0
            nonce = struct.pack("<QI", i, 1 if final else 0)
            ad = ad_prefix + struct.pack("<QBBI", i, 1 if final else 0, codec, raw_len)
            plain = k.decrypt(nonce, stored, ad)
            if final:
                total, count = struct.unpack_from("<QQ", plain, 0)
                assert (total, count) == (raw_total, i), "trailer mismatch"
                assert at == len(data), "bytes after the end frame"
                break
            assert len(plain) == raw_len
            w.write(plain)
            raw_total += raw_len
            i += 1


if __name__ == "__main__":
    main()
