"""Load test of `perank serve` on loopback: batching on against batching off, in one run.

Measures a direct `PERanker.rerank` call first (same requests, in this process, after compiling;
with the default settings and with the servers' --share-prefix policy, the prompt path a lone
request takes in the server), then starts two servers one after the other (`--max-batch B` and
`--max-batch 1`, both on 127.0.0.1, free ports), waits for each to be ready, sends a bounded number
of top-20 requests at each concurrency (1, 4, 8, 16; one keep-alive connection per worker), then a
burst of twice the queue size, stops the server with SIGTERM and prints one table, then where the
time went (the median request's queue wait, its batch's compute and the rest, from each response's
meta.latency_ms):

    conc | on: req/s p50 p95 p99 batch errors | off: req/s p50 p95 p99 batch errors

Requests are the packaged example set's queries (20 candidates each, shuffled, the query numbered),
sent by docid against an embedding cache of the example passages made by the model's encoder (the
setting of a server in front of a corpus); `--texts` sends the texts instead, each request's made
unique so no two requests share an encoding. Nothing
here leaves the machine; every request is bounded by --timeout and every server is stopped.

    python tools/load_serve.py                          # shipped model, this CPU
    python tools/load_serve.py --levels 1,8 --per-level 16 --model DIR
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")    # this process and both servers share a GPU
from perank_jax.cli import EXAMPLE_SET, build_parser  # noqa: E402  (the example set's one owner)
from perank_jax.core import SHARE_PREFIX  # noqa: E402


def make_requests(n: int, texts: bool, seed: int = 0) -> list[dict]:
    """n distinct top-20 requests: queries numbered, candidates shuffled; by docid (`{"id"}`, from the
    cache) or, with `texts`, as texts made unique per request (so no two requests share an encoding)."""
    rows = [json.loads(line) for line in EXAMPLE_SET.read_text().splitlines() if line.strip()]
    rng, out = random.Random(seed), []
    for k in range(n):
        r = rows[k % len(rows)]
        docs = [f"{c['text']} (#{k})" if texts else {"id": c["docid"]} for c in r["candidates"][:20]]
        rng.shuffle(docs)
        out.append({"query": f"{r['query']} ({k})", "documents": docs})
    return out


def served_policy(server_args: list[str]) -> str:
    """The servers' --share-prefix policy, as `perank serve` parses the --server-arg flags."""
    return build_parser().parse_args(["serve", *(w for arg in server_args for w in arg.split())]).share_prefix


def example_cache(encoder, out: Path) -> Path:
    """An embedding cache of the example set's passages, made by the model's own encoder."""
    from perank_jax.data import build_embedding_cache
    rows = [json.loads(line) for line in EXAMPLE_SET.read_text().splitlines() if line.strip()]
    corpus = out / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": c["docid"], "text": c["text"]}) + "\n"
                              for r in rows for c in r["candidates"]))
    return build_embedding_cache(encoder, corpus, out / "cache", title_format=False, progress=False)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def direct_latencies(args, bodies, tmp: Path, served) -> tuple[list[float], list[float]]:
    """Latency of PERanker.rerank on each request, one at a time, after a pass that compiles: with the
    default settings, then (one loaded model) with share_prefix=`served`, the servers' prompt path
    (the same list when that is the default). Sets args.embeddings to an example-set cache when the
    requests go by docid and none was given."""
    from perank_jax.inference import PERanker
    ranker = PERanker.from_pretrained(args.model)
    if not args.texts:
        args.embeddings = str(args.embeddings or example_cache(ranker.encoder, tmp))
        ranker.use_embeddings(args.embeddings)
    mode, default, out = ranker.config.default_mode, ranker.share_prefix, {}
    for setting in dict.fromkeys((default, served)):
        ranker.share_prefix = setting
        print(f"direct PERanker.rerank(share_prefix={setting!r}): {len(bodies)} requests ...", flush=True)
        for timed in (False, True):              # the first pass compiles every shape these requests need
            out[setting] = []
            for b in bodies:
                docs = b["documents"]
                ids = None if args.texts else [d["id"] for d in docs]
                t = time.perf_counter()
                ranker.rerank(b["query"], [""] * len(docs) if ids else docs, window=20, stride=10, mode=mode,
                              docids=ids)
                out[setting].append(time.perf_counter() - t)
    return out[default], out[served]


class Server:
    def __init__(self, args, max_batch: int, log_dir: Path):
        self.log_path = log_dir / f"serve-batch{max_batch}.log"
        cmd = [sys.executable, "-m", "perank_jax.cli", "serve", "--host", "127.0.0.1", "--port", "0",
               "--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--queue-size", str(args.queue_size), "--log-level", "warning"]
        cmd += ["--model", args.model] if args.model else []
        cmd += ["--embeddings", args.embeddings] if args.embeddings else []
        cmd += [x for arg in args.server_arg for x in arg.split()]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.host, self.port = "127.0.0.1", None

    def wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited {self.proc.returncode}: see {self.log_path}")
            if self.port is None:
                m = re.search(r"listening on http://[\d.]+:(\d+)", self.log_path.read_text())
                self.port = int(m.group(1)) if m else None
            elif request(self, "GET", "/health", None, 10)[0] == 200:
                return
            time.sleep(0.5)
        raise SystemExit(f"server not ready in {timeout} s: see {self.log_path}")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def metrics(self) -> dict:
        _, text = request(self, "GET", "/metrics", None, 30)
        out = {}
        for line in text.splitlines():
            m = re.match(r"^(perank_batch_size_(?:sum|count)) (\S+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def request(server, method, path, body, timeout, conn=None):
    """(status, text); status 0 for a connection error. Reuses `conn` (keep-alive) when given."""
    own = conn is None
    conn = conn or http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read().decode()
    except OSError:
        conn.close()
        return 0, ""
    finally:
        if own:
            conn.close()


def run_level(server, bodies, concurrency: int, timeout: float) -> dict:
    todo, lock, lat, errors, parts = list(bodies), threading.Lock(), [], [0], []

    def worker():
        conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
        while True:
            with lock:
                if not todo:
                    break
                body = todo.pop()
            t = time.perf_counter()
            status, text = request(server, "POST", "/v1/rerank", body, timeout, conn)
            with lock:
                if status == 200:
                    lat.append(time.perf_counter() - t)
                    ms = json.loads(text)["meta"]["latency_ms"]
                    queue, compute = ms["queue"] / 1000, ms["compute"] / 1000
                    parts.append((queue, compute, lat[-1] - queue - compute))
                else:
                    errors[0] += 1
        conn.close()
    before = server.metrics()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    after = server.metrics()
    nb = after.get("perank_batch_size_count", 0) - before.get("perank_batch_size_count", 0)
    nr = after.get("perank_batch_size_sum", 0) - before.get("perank_batch_size_sum", 0)
    return {"rps": len(lat) / wall, "p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99),
            "batch": nr / nb if nb else float("nan"), "errors": errors[0],
            "split": [pct([x[i] for x in parts], 50) for i in range(3)]}


def burst(server, bodies, timeout: float) -> str:
    """2 x queue size requests at once: the count of each status (200, 503 refused, 504 past the deadline;
    0 = no answer), the server's RSS before and after, then the status of one more request."""
    rss0, codes, lock = server.rss_mb(), [], threading.Lock()

    def one(b):
        s = request(server, "POST", "/v1/rerank", b, timeout)[0]
        with lock:
            codes.append(s)
    threads = [threading.Thread(target=one, args=(b,)) for b in bodies]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    after = request(server, "POST", "/v1/rerank", bodies[0], timeout)[0]
    n = len(bodies)
    counts = ", ".join(f"{codes.count(c)} x {c or 'no answer'}" for c in sorted(set(codes)))
    return (f"burst of {n} (2 x queue size): {counts}; server RSS {rss0:.0f} -> {server.rss_mb():.0f} MB; "
            f"next request: {after}")


def main(argv=None):
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        print(f"load_serve: skipped: the serve extra is not installed ({e}); pip install -e '.[serve]'")
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    p.add_argument("--embeddings", default=None, help="cache holding the example set's docids (default: built)")
    p.add_argument("--texts", action="store_true", help="send passage texts (encoded per request) instead of ids")
    p.add_argument("--levels", default="1,4,8,16")
    p.add_argument("--per-level", type=int, default=32, help="requests per concurrency level (at least 2x it)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--queue-size", type=int, default=32)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--ready-timeout", type=float, default=1200.0, help="seconds for a server's warm-up")
    p.add_argument("--no-burst", action="store_true")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARGS",
                   help="more `perank serve` flags for both servers, e.g. '--max-documents 20'")
    a = p.parse_args(argv)
    levels = [int(x) for x in a.levels.split(",")]
    sizes = {c: max(a.per_level, 2 * c) for c in levels}
    bodies = make_requests(sum(sizes.values()) + 2 * a.queue_size + 8, a.texts)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))       # stop the servers on the way out
    results, notes = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        policy = served_policy(a.server_arg)
        direct, direct_served = direct_latencies(a, bodies[:a.per_level], Path(tmp), SHARE_PREFIX[policy])
        for mb in (a.max_batch, 1):
            server = Server(a, mb, Path(tmp))
            try:
                t = time.monotonic()
                server.wait_ready(a.ready_timeout)
                notes.append(f"max batch {mb}: ready after {time.monotonic() - t:.0f} s (warm-up)")
                at = 0
                for c in levels:
                    results[(mb, c)] = run_level(server, bodies[at:at + sizes[c]], c, a.timeout)
                    at += sizes[c]
                    print(f"max batch {mb}, concurrency {c}: {results[(mb, c)]}", flush=True)
                if mb > 1 and not a.no_burst:
                    notes.append(burst(server, bodies[at:at + 2 * a.queue_size], a.timeout))
            finally:
                notes.append(f"max batch {mb}: exit status after SIGTERM {server.stop()}")
    cols = "req/s | p50 s | p95 s | p99 s | batch | err"
    print(f"\nrequests: top-20 {'texts, encoded per request' if a.texts else 'by docid from an embedding cache'}")
    print(f"| conc | batching on (max {a.max_batch}): {cols} | batching off: {cols} |")
    print("|---|" + "---|" * 12)
    for c in levels:
        cells = []
        for mb in (a.max_batch, 1):
            r = results[(mb, c)]
            cells += [f"{r['rps']:.2f}", f"{r['p50']:.3f}", f"{r['p95']:.3f}", f"{r['p99']:.3f}",
                      f"{r['batch']:.2f}", str(r["errors"])]
        print(f"| {c} | " + " | ".join(cells) + " |")
    print("\nmedian split of a request's latency, s: queue (waiting for its batch) + compute (its batch's "
          "device time) + the rest (HTTP, JSON, request checks, the client)")
    for c in levels:
        split = [" + ".join(f"{x:.3f}" for x in results[(mb, c)]["split"]) for mb in (a.max_batch, 1)]
        print(f"| {c} | batching on: {split[0]} | batching off: {split[1]} |")
    print(f"\ndirect PERanker.rerank ({len(direct)} requests, one at a time): p50 {pct(direct, 50):.3f} s, "
          f"p99 {pct(direct, 99):.3f} s (default settings); with the server's share_prefix={SHARE_PREFIX[policy]!r} "
          f"(--share-prefix {policy}): p50 {pct(direct_served, 50):.3f} s, p99 {pct(direct_served, 99):.3f} s")
    if 8 in levels:
        print(f"throughput at concurrency 8: {results[(a.max_batch, 8)]['rps'] / results[(1, 8)]['rps']:.2f}x "
              f"batching off (target >= 1.6x)")
    if 1 in levels:
        p99 = results[(a.max_batch, 1)]["p99"]
        print(f"p99 at concurrency 1: {p99 / pct(direct, 99):.2f}x the direct call's (target <= 1.15x); "
              f"{p99 / pct(direct_served, 99):.2f}x the direct call's on the server's prompt path")
    for n in notes:
        print(n)


if __name__ == "__main__":
    main()
