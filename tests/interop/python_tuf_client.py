#!/usr/bin/env python3
"""Refresh a TUF repository and download targets with python-tuf's ngclient.

The reference client of Hale's interop tests: it checks that a repository
(made by python_tuf_repo.py, or by Hale's signing tool) is accepted by
python-tuf 7's ``tuf.ngclient.Updater``.

Starting from the trusted root ROOT_JSON (e.g. 1.root.json), it runs the full
TUF client workflow (root rotation, timestamp, snapshot, targets, delegations)
and downloads every --target, checking length and hashes.

On success prints one JSON line and exits 0:
    {"ok": true, "targets": {"<name>": "<sha256 of downloaded file>"}}
On any failure prints one JSON line and exits 1:
    {"ok": false, "error": "<ExceptionType>: <message>"}
With --log-urls every URL fetched is printed to stderr, in order.

Usage:
    python_tuf_client.py --root ROOT_JSON --metadata-url URL
                         --target-base-url URL --target NAME [--target NAME...]
                         --work DIR [--log-urls]
"""
import argparse
import hashlib
import json
import os
import shutil
import sys

from tuf.ngclient import Updater
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher


class LoggingFetcher(Urllib3Fetcher):
    """The default ngclient fetcher, printing each requested URL to stderr."""

    def _fetch(self, url):
        print(f"GET {url}", file=sys.stderr)
        return super()._fetch(url)


def run(a):
    # fresh metadata/target dirs under --work so results do not depend on a
    # previous run's cache (ngclient 7 also caches intermediate roots in
    # metadata/root_history/, so the whole tree is removed)
    mdir = os.path.join(a.work, "metadata")
    tdir = os.path.join(a.work, "targets")
    for d in (mdir, tdir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    with open(a.root, "rb") as f:
        root = f.read()
    up = Updater(
        mdir,
        a.metadata_url,
        tdir,
        a.target_base_url,
        fetcher=LoggingFetcher() if a.log_urls else None,
        bootstrap=root,
    )
    up.refresh()
    got = {}
    for name in a.target:
        info = up.get_targetinfo(name)
        if info is None:
            raise LookupError(f"target {name!r} not found in any trusted role")
        # local file name: the target path with "/" escaped, so nested names
        # land in the flat target dir
        path = up.download_target(info, os.path.join(tdir, name.replace("/", "%2F")))
        with open(path, "rb") as f:
            got[name] = hashlib.sha256(f.read()).hexdigest()
    return got


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="trusted root metadata file")
    ap.add_argument("--metadata-url", required=True)
    ap.add_argument("--target-base-url", required=True)
    ap.add_argument("--target", action="append", required=True)
    ap.add_argument("--work", required=True, help="client state directory")
    ap.add_argument("--log-urls", action="store_true",
                    help="print every fetched URL to stderr")
    a = ap.parse_args()
    try:
        got = run(a)
    except Exception as e:  # noqa: BLE001 - any failure is a test failure
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps({"ok": True, "targets": got}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
