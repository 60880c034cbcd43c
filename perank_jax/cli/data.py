"""`perank data fetch`: the public retrieval data at pinned versions, prepared for the builders."""
from __future__ import annotations

import sys
from pathlib import Path

from perank_jax.core.outputs import check_outputs


# --- data (the public retrieval data, fetched at pinned versions) ------------------------
def add_data(sub):
    p = sub.add_parser("data", help="fetch the public retrieval data (docs/data.md)")
    dsub = p.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download every pinned source file (resumable, sha256-checked) "
                                      "and prepare dl20/ dl22/ scifact/ nfcorpus/ wiki/ msmarco-triples/")
    f.add_argument("--out", required=True, help="data folder (e.g. data/raw); sources go to OUT/downloads/")
    f.add_argument("--mirror", default=None, help="read every file from this base (http(s):// or file:// URL, "
                                                   "or a directory) + the URL's path instead of its host")
    f.add_argument("--manifest", default=None, help="a manifest of your own (default: perank_jax/data/sources.json)")
    f.add_argument("--sets", nargs="+", default=None, metavar="SET", help="only these sets (default: all)")
    f.add_argument("--download-only", action="store_true", help="fetch and verify, do not prepare")

    def run(a):
        from perank_jax.data.fetch import fetch_all
        from perank_jax.data.prepare import SETS, prepare
        sets = a.sets or SETS
        unknown = sorted(set(sets) - set(SETS))
        if unknown:
            raise ValueError(f"--sets: unknown {', '.join(unknown)} (known: {', '.join(SETS)})")
        check_outputs(dirs=[a.out])
        log = lambda m: print(m, file=sys.stderr)   # noqa: E731
        got = fetch_all(a.out, manifest=a.manifest, mirror=a.mirror, sets=sets, log=log)
        print(f"{len(got)} source files verified in {Path(a.out) / 'downloads'}")
        if not a.download_only:
            from perank_jax.evaluate.bm25 import bm25_run
            written = prepare(a.out, sets=sets, bm25=bm25_run, log=log)
            print(f"wrote {len(written)} files under {a.out} ({', '.join(s for s in SETS if s in sets)})")
    p.set_defaults(func=run)


