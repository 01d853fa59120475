#!/usr/bin/env python3
"""Print, by running python-tuf 7 / securesystemslib 1.6, the wire-format facts
a compatible verifier (Hale) must match. The source of docs/notes-python-tuf.md.

Every fact below is computed or checked here, not recalled:
  a. public key JSON (ECDSA P-256, ed25519) and the keyid rule
  b. signature encodings (ecdsa-sha2-nistp256, ed25519) and the signed payload
  c. spec_version, succinct_roles shape, bin naming and target -> bin mapping
  d. URLs ngclient requests (consistent snapshots, target name with "/")
  e. default serializer layout; ngclient and unknown fields in `signed`;
     whether signatures cover the raw bytes or the canonical form
  extra: raw r||s ECDSA, duplicate signatures, non-hash keyids, file shapes

Usage (venv python): python_tuf_facts.py [--keep DIR]
"""
import argparse
import copy
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner, Key, Signature, SSlibKey
from tuf.api.metadata import Metadata, Root, SuccinctRoles, Targets

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, HERE)
import python_tuf_repo as gen  # noqa: E402
from run_python_interop import serve  # noqa: E402


def section(t):
    print(f"\n=== {t}")


def make_repo(out, scenario):
    subprocess.run([sys.executable, os.path.join(HERE, "python_tuf_repo.py"),
                    "--out", out, "--scenario", scenario],
                   check=True, stdout=subprocess.DEVNULL)


def client(repo, targets, work):
    """Run python_tuf_client.py against repo; return (rc, stdout, urls)."""
    proc, url = serve(repo)
    try:
        cmd = [sys.executable, os.path.join(HERE, "python_tuf_client.py"),
               "--root", os.path.join(repo, "1.root.json"), "--metadata-url", url,
               "--target-base-url", url + "/targets", "--work", work, "--log-urls"]
        for t in targets:
            cmd += ["--target", t]
        r = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        proc.terminate()
        proc.wait()
    urls = [ln[4:].replace(url, "") for ln in r.stderr.splitlines() if ln.startswith("GET ")]
    return r.returncode, r.stdout.strip(), urls


def facts_keys_and_sigs(repo):
    root_md = json.load(open(os.path.join(repo, "1.root.json")))
    signed = root_md["signed"]
    section("a. public keys in root.json (root role: ecdsa + ed25519)")
    for keyid in signed["roles"]["root"]["keyids"]:
        key = signed["keys"][keyid]
        print(json.dumps(key, indent=1))
        canon = encode_canonical(key).encode()
        print("  canonical JSON:", canon.decode()[:120] + "...")
        print("  sha256(canonical(keytype,scheme,keyval)) == keyid:",
              hashlib.sha256(canon).hexdigest() == keyid)
        print("  key has only keytype/scheme/keyval:", sorted(key) == ["keytype", "keyval", "scheme"])

    section("b. signatures over canonical JSON of `signed`")
    payload = encode_canonical(signed).encode()
    for sig in root_md["signatures"]:
        key = signed["keys"][sig["keyid"]]
        raw = bytes.fromhex(sig["sig"])
        print(f"  {key['scheme']}: sig field is lowercase hex: {sig['sig'] == raw.hex()}; "
              f"{len(raw)} bytes; first byte 0x{raw[0]:02x}")
        if key["keytype"] == "ecdsa":
            pub = serialization.load_pem_public_key(key["keyval"]["public"].encode())
            r, s = decode_dss_signature(raw)  # raises if not DER
            print(f"    DER ECDSA-Sig-Value (SEQUENCE{{r,s}}) parses: r={r.bit_length()}b s={s.bit_length()}b")
            pub.verify(raw, payload, ec.ECDSA(hashes.SHA256()))
            print("    verifies over SHA-256(canonical JSON of signed): True")
            try:
                pub.verify(raw, json.dumps(signed, indent=1, sort_keys=True).encode(),
                           ec.ECDSA(hashes.SHA256()))
                print("    verifies over pretty JSON too (unexpected)")
            except InvalidSignature:
                print("    verifies over the indented file form: False")
        else:
            pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key["keyval"]["public"]))
            pub.verify(raw, payload)
            print("    pure Ed25519 (no prehash) over canonical JSON of signed: True")
    print("  signature object:", json.dumps({k: (v[:16] + "..." if k == "sig" else v)
                                             for k, v in root_md["signatures"][0].items()}))
    print("  canonical JSON sample (no spaces, sorted keys):",
          encode_canonical({"b": [1, "x\"y\\z"], "a": True, "c": None}))


def facts_succinct(repo):
    section("c. spec_version and succinct_roles")
    t = json.load(open(os.path.join(repo, "1.targets.json")))["signed"]
    print("  spec_version:", json.dumps(t["spec_version"]))
    print("  _type values:", sorted({json.load(open(os.path.join(repo, f)))["signed"]["_type"]
                                     for f in ("1.root.json", "1.targets.json",
                                               "1.snapshot.json", "timestamp.json")}))
    print("  expires example:", t["expires"])
    print("  delegations:", json.dumps({**t["delegations"], "keys": {"<keyid>": "..."}}, indent=1))
    for bl in (1, 4, 5, 8, 9, 16):
        sr = SuccinctRoles([], 1, bl, "bin")
        names = list(sr.get_roles())
        print(f"  bit_length={bl}: {len(names)} bins, first {names[0]!r}, last {names[-1]!r}")
    sr = SuccinctRoles([], 1, 5, "bin")
    for p in ("file-00.bin", "pkg/file-01.bin"):
        d = hashlib.sha256(p.encode()).digest()
        idx = int.from_bytes(d[:4], "big") >> (32 - 5)
        print(f"  {p!r}: sha256={d[:4].hex()}..., first 5 bits -> {idx} -> "
              f"{sr.get_role_for_target(p)!r} (manual: 'bin-{idx:02x}')")
    snap = json.load(open(os.path.join(repo, "1.snapshot.json")))["signed"]["meta"]
    print(f"  snapshot.meta lists {sum(k.startswith('bin-') for k in snap)} bin roles, e.g.",
          json.dumps({"bin-00.json": snap["bin-00.json"]}))


def facts_urls(repo, work):
    section("d. URLs ngclient fetches (consistent snapshots, trusted root = 1.root.json)")
    rc, out, urls = client(repo, ["pump-a/beta/firmware.bin", "readme.txt"], work)
    print("  rc", rc, out[:60] + "...")
    for u in urls:
        print("   ", u)


def facts_serializer_and_unknown(base):
    section("e. default serializer and unknown fields")
    repo = os.path.join(base, "unknown")
    make_repo(repo, "basic")
    text = open(os.path.join(repo, "1.targets.json")).read()
    print("  first lines of 1.targets.json as python_tuf_repo.py writes it "
          "(JSONSerializer() = compact=False):")
    for ln in text.splitlines()[:6]:
        print("    |" + ln)
    print("  file ends with newline:", text.endswith("\n"))
    m = Metadata.from_bytes(text.encode())
    default = m.to_bytes()
    print("  Metadata.to_bytes()/to_file() with no serializer (compact=True) starts:",
          default[:70].decode() + "...")
    print("  ... equals canonical JSON of the whole document:",
          default == encode_canonical(json.loads(text)).encode())
    print("  canonical vs json.dumps for non-ASCII: canonical",
          encode_canonical({"n": "f\u00fcr\nx"}).encode(), "| python-tuf JSONSerializer",
          json.dumps({"n": "f\u00fcr\nx"}, separators=(",", ":")).encode())

    # Rebuild every top-level role with an unknown field inside `signed`
    # (and inside a target entry), signed properly by the same generator.
    orig_sign = gen.Repo.sign

    def sign_with_extra(md, signers):
        md.signed.unrecognized_fields["x-hale-extra"] = {"note": "Pumpe f\u00fcr \u03a9"}
        orig_sign(md, signers)

    gen.Repo.sign = staticmethod(sign_with_extra)
    try:
        shutil_rm(repo)
        r = gen.Repo(repo, 30, False)
        gen.scenario_basic(r)
    finally:
        gen.Repo.sign = staticmethod(orig_sign)
    t = json.load(open(os.path.join(repo, "1.targets.json")))["signed"]
    print("  1.targets.json signed keys:", sorted(t))
    raw = open(os.path.join(repo, "1.targets.json"), "rb").read()
    i = raw.find(b'"x-hale-extra"')
    print("  unknown field as written:", raw[i:raw.find(b"}", i) + 1].replace(b"\n", b" "))
    rc, out, _ = client(repo, ["readme.txt"], os.path.join(base, "cw1"))
    print(f"  ngclient with signed unknown field in root/targets/snapshot/timestamp: rc={rc} {out[:40]}")

    # Same repo: add an unknown field AFTER signing (not covered by signature)
    p = os.path.join(repo, "1.targets.json")
    md = json.load(open(p))
    md["signed"]["x-unsigned"] = 1
    json.dump(md, open(p, "w"), indent=1)
    rc, out, _ = client(repo, ["readme.txt"], os.path.join(base, "cw2"))
    print(f"  unknown field added after signing: rc={rc} {out[:90]}")

    # Re-serialize a signed file differently (compact, unsorted) without re-signing
    repo2 = os.path.join(base, "reformat")
    make_repo(repo2, "basic")
    p = os.path.join(repo2, "1.targets.json")
    md = json.load(open(p))
    md["signed"] = dict(reversed(list(md["signed"].items())))
    open(p, "w").write(json.dumps(md, separators=(",", ":")))
    rc, out, _ = client(repo2, ["readme.txt"], os.path.join(base, "cw3"))
    print(f"  same signed content re-serialized (compact, other key order), not re-signed: rc={rc} {out[:40]}")
    # Metadata API view of the same
    m = Metadata[Targets].from_file(p)
    print("  Metadata.signed_bytes == encode_canonical(signed):",
          m.signed_bytes == encode_canonical(json.load(open(p))["signed"]).encode())


def facts_extra(repo):
    section("extra: signature/keyid strictness of python-tuf, file shapes")
    m = json.load(open(os.path.join(repo, "1.root.json")))
    signed = m["signed"]
    payload = encode_canonical(signed).encode()
    for sig in m["signatures"]:
        kd = signed["keys"][sig["keyid"]]
        key = Key.from_dict(sig["keyid"], copy.deepcopy(kd))
        if kd["keytype"] == "ecdsa":
            r, s = decode_dss_signature(bytes.fromhex(sig["sig"]))
            raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
            try:
                key.verify_signature(Signature(sig["keyid"], raw.hex()), payload)
                print("  ecdsa raw r||s (64 bytes) signature: accepted")
            except UnverifiedSignatureError:
                print("  ecdsa raw r||s (64 bytes) signature: REJECTED (DER only)")
            key.verify_signature(Signature(sig["keyid"], sig["sig"].upper()), payload)
            print("  uppercase hex signature: accepted (bytes.fromhex)")
    dup = copy.deepcopy(m)
    dup["signatures"].append(copy.deepcopy(dup["signatures"][0]))
    try:
        Metadata.from_dict(dup)
        print("  duplicate signature keyid: accepted")
    except ValueError as e:
        print(f"  duplicate signature keyid: rejected at parse ({e})")
    # keyid that is not sha256(canonical key): does python-tuf verify it?
    signer = CryptoSigner.generate_ed25519()
    pk = signer.public_key
    odd = SSlibKey("not-a-hash", pk.keytype, pk.scheme, dict(pk.keyval))
    root = Root(expires=datetime.now(timezone.utc) + timedelta(days=1))
    for r in ("root", "targets", "snapshot", "timestamp"):
        root.add_key(odd, r)
    md = Metadata(root)
    md.signatures["not-a-hash"] = Signature("not-a-hash", signer.sign(md.signed_bytes).signature)
    md = Metadata.from_bytes(md.to_bytes())
    md.verify_delegate("root", md)
    print("  root whose keyid is 'not-a-hash' (not sha256 of key): verifies "
          "(python-tuf does not recompute keyids)")
    ts = json.load(open(os.path.join(repo, "timestamp.json")))["signed"]
    print("  timestamp signed:", json.dumps(ts))
    t = json.load(open(os.path.join(repo, "1.pump-a.json")))["signed"]
    print("  pump-a target entry:", json.dumps(t["targets"]["pump-a/firmware.bin"]))
    print("  pump-a delegations.roles[0]:",
          json.dumps(t["delegations"]["roles"][0]))


def shutil_rm(d):
    import shutil
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", help="keep the repos here instead of a temp dir")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hale-facts-") as tmp:
        base = a.keep or tmp
        os.makedirs(base, exist_ok=True)
        deleg = os.path.join(base, "delegations")
        make_repo(deleg, "delegations")
        facts_keys_and_sigs(deleg)
        succ = os.path.join(base, "succinct")
        make_repo(succ, "succinct")
        facts_succinct(succ)
        facts_urls(deleg, os.path.join(base, "cw0"))
        facts_serializer_and_unknown(base)
        facts_extra(deleg)


if __name__ == "__main__":
    main()
