#!/usr/bin/env python3
"""Self-check of the python-tuf reference pair: repo generator x ngclient.

For each scenario: python_tuf_repo.py writes a repository into a temp dir,
`python -m http.server` serves it on 127.0.0.1 (a free port chosen by the OS),
and python_tuf_client.py (trusted root = 1.root.json) refreshes and downloads
every target listed in expected.json; the sha256 values it reports must match
expected.json and the client must end on the newest root version.

Negative controls (so a broken harness cannot pass silently), on copies of the
repository, each of which the client must REJECT:
  - target-bytes:   one byte of a target file flipped (same length)
  - unsigned-field: a field added to a role's `signed` after signing
  - old-root-sigs:  (rotation) 2.root.json without the OLD root keys' signatures

Ends with the plain line "N passed, N failed". Run with the venv's python:
    target/venv/bin/python tests/interop/run_python_interop.py [--scenario S ...]
                           [--keep DIR] [--meta-hashes] [--compact]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = ("basic", "delegations", "succinct", "rotation")


def serve(directory):
    """Start http.server on a free loopback port; return (process, base URL)."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0",
         "--bind", "127.0.0.1", "--directory", directory],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (...)"
    m = re.search(r"port (\d+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"http.server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{m.group(1)}"


def run_client(repo, targets, work):
    """Serve repo and run python_tuf_client.py; return (returncode, stdout)."""
    proc, url = serve(repo)
    try:
        cmd = [sys.executable, os.path.join(HERE, "python_tuf_client.py"),
               "--root", os.path.join(repo, "1.root.json"),
               "--metadata-url", url, "--target-base-url", url + "/targets",
               "--work", work]
        for name in targets:
            cmd += ["--target", name]
        r = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        proc.terminate()
        proc.wait()
    return r.returncode, (r.stdout.strip() + " " + r.stderr.strip()).strip()


def load(path):
    with open(path) as f:
        return json.load(f)


def dump(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def role_file(repo, role):
    """Path of the (only) versioned metadata file of `role`."""
    names = [f for f in os.listdir(repo) if re.fullmatch(rf"\d+\.{re.escape(role)}\.json", f)]
    return os.path.join(repo, sorted(names, key=lambda f: int(f.split(".")[0]))[-1])


# --- negative controls: each mutates a copy of the repo ----------------------
def neg_target_bytes(repo, name, info):
    parent, sep, base = name.rpartition("/")
    path = os.path.join(repo, "targets", f"{parent}{sep}{info['sha256']}.{base}")
    with open(path, "r+b") as f:
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 1]))


def neg_unsigned_field(repo, name, info):
    path = role_file(repo, info["role"])
    md = load(path)
    md["signed"]["x-unsigned"] = True
    dump(md, path)


def neg_old_root_sigs(repo, name, info):
    old = set(load(os.path.join(repo, "1.root.json"))["signed"]["roles"]["root"]["keyids"])
    path = os.path.join(repo, "2.root.json")
    md = load(path)
    md["signatures"] = [s for s in md["signatures"] if s["keyid"] not in old]
    dump(md, path)


def check(scenario, base, gen_flags):
    repo = os.path.join(base, scenario, "repo")
    subprocess.run([sys.executable, os.path.join(HERE, "python_tuf_repo.py"),
                    "--out", repo, "--scenario", scenario, *gen_flags],
                   check=True, stdout=subprocess.DEVNULL)
    expected = load(os.path.join(repo, "expected.json"))
    results = []  # (label, error or None)

    # positive: everything downloads with the expected hashes
    work = os.path.join(base, scenario, "client")
    rc, out = run_client(repo, list(expected["targets"]), work)
    err = None
    if rc != 0:
        err = f"client exit {rc}: {out}"
    else:
        got = json.loads(out.split("\n")[0])["targets"]
        want = {n: t["sha256"] for n, t in expected["targets"].items()}
        newest = max(expected["root_versions"])
        v = load(os.path.join(work, "metadata", "root.json"))["signed"]["version"]
        if got != want:
            err = f"hash mismatch: got {got}, want {want}"
        elif v != newest:
            err = f"client trusts root v{v}, want v{newest}"
    results.append((scenario, err))

    # negative controls, on a target of a delegated role if there is one
    # (longest role name: pump-a-beta, the nested delegation, in delegations)
    name, info = max(expected["targets"].items(),
                     key=lambda kv: (kv[1]["role"] != "targets", len(kv[1]["role"]), kv[0]))
    negs = [("target-bytes", neg_target_bytes), ("unsigned-field", neg_unsigned_field)]
    if scenario == "rotation":
        negs.append(("old-root-sigs", neg_old_root_sigs))
    for label, mutate in negs:
        copy = os.path.join(base, scenario, f"neg-{label}")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(repo, copy)
        mutate(copy, name, info)
        rc, out = run_client(copy, [name], os.path.join(base, scenario, f"client-{label}"))
        err = None if rc == 1 and '"ok": false' in out else f"expected rejection, got rc={rc}: {out}"
        results.append((f"{scenario}/reject-{label} ({info['role']}: {name})", err))
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", action="append", choices=SCENARIOS)
    ap.add_argument("--keep", help="write repos here instead of a temp dir")
    ap.add_argument("--meta-hashes", action="store_true",
                    help="length + sha256 in snapshot/timestamp meta")
    ap.add_argument("--compact", action="store_true",
                    help="write compact instead of indented metadata")
    a = ap.parse_args()
    flags = (["--meta-hashes"] if a.meta_hashes else []) + (["--compact"] if a.compact else [])
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="hale-interop-") as tmp:
        base = a.keep or tmp
        for s in a.scenario or SCENARIOS:
            for label, err in check(s, base, flags):
                print(f"{'ok  ' if err is None else 'FAIL'} {label}" + (f": {err}" if err else ""))
                passed += err is None
                failed += err is not None
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
