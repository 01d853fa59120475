#!/usr/bin/env python3
"""Write a complete TUF repository with python-tuf's Metadata API.

This is the *reference* side of Hale's interop tests: the repository is made
only with python-tuf 7 (``tuf.api.metadata``) and securesystemslib's
``CryptoSigner``, so Hale's verifier can be checked against metadata it did
not produce itself.

Layout written under --out (consistent snapshots on). Metadata is written
with python-tuf's ``JSONSerializer()`` at its constructor default
(compact=False): indented (indent=1), sorted keys, ASCII-escaped -- i.e.
NOT canonical JSON, so a verifier must canonicalize the parsed `signed`
object rather than hash file bytes. Note: ``Metadata.to_file()`` with no
serializer argument writes COMPACT JSON instead (JSONSerializer(compact=True));
--compact selects that.

    1.root.json [2.root.json 3.root.json]   every root version
    root.json                               copy of the newest root
    N.targets.json, N.<role>.json           targets + delegated roles
    N.snapshot.json
    timestamp.json
    targets/<sha256>.<name>                 flat target names
    targets/<dir>/<sha256>.<basename>       names containing "/"
                                            (TargetFile.get_prefixed_paths())
    expected.json                           what a client must end up with

Scenarios (--scenario):
    basic        3 targets directly in targets.json (one with "/" in its name,
                 one with a `custom` field).
    delegations  targets -> pump-a (terminating, ecdsa key) and common
                 (ed25519 key); pump-a -> pump-a-beta (nested).
    succinct     TAP 15 succinct hash bins (bit_length 5 by default:
                 "bin-00".."bin-1f"), 50 targets, every bin written and
                 listed in snapshot (empty ones too; 10 of 32 are empty).
    rotation     root v1 -> v2 (new root keys, signed by old AND new
                 threshold) -> v3 (timestamp key rotated).

Keys: root = ECDSA P-256 + ed25519, threshold 2; targets = ECDSA P-256;
snapshot, timestamp = ed25519; delegated roles: see each scenario. Keys are
fresh random keys on every run; target contents are deterministic.

Usage:
    python_tuf_repo.py --out DIR --scenario basic|delegations|succinct|rotation
                       [--expires-days N] [--meta-hashes] [--bit-length B]
                       [--compact]
"""
import argparse
import hashlib
import json
import os
import shutil
from datetime import datetime, timedelta, timezone

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    MetaFile,
    Metadata,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

SCENARIOS = ("basic", "delegations", "succinct", "rotation")

# The `custom` field carried by one target in every scenario that has it.
PUMP_A_CUSTOM = {
    "hardware": [{"model": "pump-a", "revisions": ["r1", "r2"]}],
    "version": "1.2.0",
    "security_counter": 3,
}


def content_for(name, size=None):
    """Deterministic target content derived from its name only."""
    seed = hashlib.sha256(name.encode()).digest()
    # length between 1 and 4 KiB, a function of the name, unless given
    n = size if size is not None else 1 + int.from_bytes(seed[:2], "big") % 4096
    out = bytearray()
    block = seed
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


class Repo:
    """Holds the metadata objects and signers of one repository being built."""

    def __init__(self, out, expires_days, meta_hashes, compact=False):
        self.out = out
        self.meta_hashes = meta_hashes
        # indented (default) or compact JSON, see module docstring
        self.serializer = JSONSerializer(compact=compact)
        now = datetime.now(timezone.utc).replace(microsecond=0)
        self.expires = now + timedelta(days=expires_days)
        # role name -> (Metadata[Targets], [signers]) for targets + delegated
        self.targets_roles = {}
        # target name -> role that lists it (for expected.json)
        self.expected = {}
        self.root_versions = []

    # -- targets ---------------------------------------------------------
    def add_target(self, role, name, custom=None, size=None):
        """Create the target file on disk and list it in `role`."""
        data = content_for(name, size)
        tf = TargetFile.from_data(name, data, ["sha256"])
        if custom is not None:
            tf.unrecognized_fields["custom"] = custom
        md, _ = self.targets_roles[role]
        md.signed.targets[name] = tf
        # consistent snapshot target path, python-tuf's own layout
        for rel in tf.get_prefixed_paths():
            dst = os.path.join(self.out, "targets", rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "wb") as f:
                f.write(data)
        self.expected[name] = {
            "length": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "role": role,
        }

    def new_targets_role(self, role, signers):
        md = Metadata(Targets(expires=self.expires))
        self.targets_roles[role] = (md, signers)
        return md.signed

    # -- writing ---------------------------------------------------------
    def write(self, md, fname):
        md.to_file(os.path.join(self.out, fname), serializer=self.serializer)

    @staticmethod
    def sign(md, signers):
        for i, s in enumerate(signers):
            md.sign(s, append=i > 0)

    def metafile(self, md):
        """MetaFile for md (version only, or + length/sha256 if requested)."""
        if not self.meta_hashes:
            return MetaFile(version=md.signed.version)
        data = md.to_bytes(self.serializer)  # the bytes write() writes
        return MetaFile.from_data(md.signed.version, data, ["sha256"])

    def write_root(self, md, signers):
        self.sign(md, signers)
        v = md.signed.version
        self.write(md, f"{v}.root.json")
        self.write(md, "root.json")  # newest root also as root.json
        self.root_versions.append(v)

    def finish(self, snapshot_signers, timestamp_signers):
        """Sign/write every targets role, snapshot and timestamp."""
        snapshot = Metadata(Snapshot(expires=self.expires))
        for role, (md, signers) in self.targets_roles.items():
            self.sign(md, signers)
            self.write(md, f"{md.signed.version}.{role}.json")
            snapshot.signed.meta[f"{role}.json"] = self.metafile(md)
        self.sign(snapshot, snapshot_signers)
        self.write(snapshot, f"{snapshot.signed.version}.snapshot.json")

        timestamp = Metadata(Timestamp(expires=self.expires))
        timestamp.signed.snapshot_meta = self.metafile(snapshot)
        self.sign(timestamp, timestamp_signers)
        self.write(timestamp, "timestamp.json")


def top_level_signers():
    """Fresh keys for the four top-level roles (root has two)."""
    return {
        "root": [CryptoSigner.generate_ecdsa(), CryptoSigner.generate_ed25519()],
        "targets": [CryptoSigner.generate_ecdsa()],
        "snapshot": [CryptoSigner.generate_ed25519()],
        "timestamp": [CryptoSigner.generate_ed25519()],
    }


def make_root(repo, signers):
    root = Root(expires=repo.expires, consistent_snapshot=True)
    for role, ss in signers.items():
        for s in ss:
            root.add_key(s.public_key, role)
    root.roles["root"].threshold = len(signers["root"])  # 2
    return Metadata(root)


def basic_targets(repo, role="targets"):
    repo.add_target(role, "readme.txt")
    repo.add_target(role, "firmware/pump-a.bin", custom=PUMP_A_CUSTOM)
    repo.add_target(role, "manifest.json")


def scenario_basic(repo):
    sg = top_level_signers()
    repo.write_root(make_root(repo, sg), sg["root"])
    repo.new_targets_role("targets", sg["targets"])
    basic_targets(repo)
    repo.finish(sg["snapshot"], sg["timestamp"])


def scenario_delegations(repo):
    sg = top_level_signers()
    repo.write_root(make_root(repo, sg), sg["root"])
    pump_a = CryptoSigner.generate_ecdsa()
    common = CryptoSigner.generate_ed25519()
    beta = CryptoSigner.generate_ed25519()

    top = repo.new_targets_role("targets", sg["targets"])
    # python-tuf matches path patterns component by component ("*" never
    # crosses a "/"), so "pump-a/*" alone would not cover
    # "pump-a/beta/<file>"; "pump-a/*/*" is added so the nested delegation
    # to pump-a-beta is reachable.
    top.delegations = Delegations(
        keys={pump_a.public_key.keyid: pump_a.public_key,
              common.public_key.keyid: common.public_key},
        roles={
            "pump-a": DelegatedRole("pump-a", [pump_a.public_key.keyid], 1, True,
                                    paths=["pump-a/*", "pump-a/*/*"]),
            "common": DelegatedRole("common", [common.public_key.keyid], 1, False,
                                    paths=["*"]),
        },
    )
    repo.add_target("targets", "readme.txt")

    pa = repo.new_targets_role("pump-a", [pump_a])
    pa.delegations = Delegations(
        keys={beta.public_key.keyid: beta.public_key},
        roles={"pump-a-beta": DelegatedRole(
            "pump-a-beta", [beta.public_key.keyid], 1, False,
            paths=["pump-a/beta/*"])},
    )
    repo.add_target("pump-a", "pump-a/firmware.bin", custom=PUMP_A_CUSTOM)
    repo.add_target("pump-a", "pump-a/release-notes.txt")

    repo.new_targets_role("common", [common])
    repo.add_target("common", "ca-bundle.pem")
    repo.add_target("common", "settings.json")

    repo.new_targets_role("pump-a-beta", [beta])
    repo.add_target("pump-a-beta", "pump-a/beta/firmware.bin")

    repo.finish(sg["snapshot"], sg["timestamp"])


def scenario_succinct(repo, bit_length=5, n_targets=50):
    sg = top_level_signers()
    repo.write_root(make_root(repo, sg), sg["root"])
    bins_key = CryptoSigner.generate_ed25519()
    top = repo.new_targets_role("targets", sg["targets"])
    succinct = SuccinctRoles(keyids=[bins_key.public_key.keyid], threshold=1,
                             bit_length=bit_length, name_prefix="bin")
    top.delegations = Delegations(
        keys={bins_key.public_key.keyid: bins_key.public_key},
        succinct_roles=succinct,
    )
    # every bin role exists (and is listed in snapshot), empty ones too
    for name in succinct.get_roles():
        repo.new_targets_role(name, [bins_key])
    for i in range(n_targets):
        # mix of flat names and names with a directory
        name = f"pkg/file-{i:02d}.bin" if i % 2 else f"file-{i:02d}.bin"
        repo.add_target(succinct.get_role_for_target(name), name)
    repo.finish(sg["snapshot"], sg["timestamp"])


def scenario_rotation(repo):
    sg = top_level_signers()
    # v1: original keys
    v1 = make_root(repo, sg)
    repo.write_root(v1, sg["root"])

    # v2: both root keys replaced (still ECDSA + ed25519, threshold 2).
    # Must be signed by a threshold of the OLD root keys (v1's root role)
    # and of the NEW ones (v2's own root role).
    old_root = sg["root"]
    new_root = [CryptoSigner.generate_ecdsa(), CryptoSigner.generate_ed25519()]
    v2 = Metadata(Root.from_dict(v1.signed.to_dict()))
    v2.signed.version = 2
    for s in old_root:
        v2.signed.revoke_key(s.public_key.keyid, "root")
    for s in new_root:
        v2.signed.add_key(s.public_key, "root")
    v2.signed.roles["root"].threshold = 2
    repo.write_root(v2, old_root + new_root)
    sg["root"] = new_root

    # v3: timestamp key rotated; signed by the (unchanged) v2 root keys.
    new_ts = CryptoSigner.generate_ed25519()
    v3 = Metadata(Root.from_dict(v2.signed.to_dict()))
    v3.signed.version = 3
    for s in sg["timestamp"]:
        v3.signed.revoke_key(s.public_key.keyid, "timestamp")
    v3.signed.add_key(new_ts.public_key, "timestamp")
    repo.write_root(v3, new_root)
    sg["timestamp"] = [new_ts]

    repo.new_targets_role("targets", sg["targets"])
    basic_targets(repo)
    # timestamp.json is signed with the v3 timestamp key only
    repo.finish(sg["snapshot"], sg["timestamp"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="repository directory (replaced)")
    ap.add_argument("--scenario", choices=SCENARIOS, default="basic")
    ap.add_argument("--expires-days", type=int, default=365,
                    help="expiry of every role, days from now (default 365)")
    ap.add_argument("--meta-hashes", action="store_true",
                    help="also put length + sha256 in snapshot/timestamp meta")
    ap.add_argument("--compact", action="store_true",
                    help="compact JSON (what Metadata.to_file() writes by default)")
    ap.add_argument("--bit-length", type=int, default=5,
                    help="succinct scenario: bit_length of the hash bins")
    a = ap.parse_args()

    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    repo = Repo(a.out, a.expires_days, a.meta_hashes, a.compact)
    if a.scenario == "succinct":
        scenario_succinct(repo, bit_length=a.bit_length)
    else:
        globals()[f"scenario_{a.scenario}"](repo)

    expected = {
        "scenario": a.scenario,
        "root_versions": repo.root_versions,
        "targets": dict(sorted(repo.expected.items())),
    }
    with open(os.path.join(a.out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2, sort_keys=True)
        f.write("\n")
    print(json.dumps({"out": a.out, "scenario": a.scenario,
                      "targets": len(repo.expected),
                      "root_versions": repo.root_versions}))


if __name__ == "__main__":
    main()
