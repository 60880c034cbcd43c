"""Helpers for the `perank serve` tests: JSON over HTTP (stdlib), a server process on a free
loopback port (always stopped), its Prometheus metrics parsed, and the real app and scheduler served
in-process over a stand-in ranker whose speed and failures a test sets."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import threading
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def call(base: str, path: str, body=None, *, raw: bytes | None = None, timeout: float = 60):
    """(status, headers (lower-case names), decoded JSON or text) of GET (body None) or POST path."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method="GET" if data is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, headers, text = r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as e:
        status, headers, text = e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()
    try:
        return status, headers, json.loads(text)
    except ValueError:
        return status, headers, text


def metric(base: str, name: str, **labels) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    _, _, text = call(base, "/metrics")
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))).strip(",") == want:
            return float(m.group(3))
    return 0.0


class ServerProcess:
    """`perank serve ARGS --port 0` in a subprocess; `.base` once it listens; `.stop()` always ends it."""

    def __init__(self, args, log_path, env=None):
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "perank_jax.cli", "serve", "--port", "0", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        self.base = None

    def wait_listening(self, timeout: float = 120) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(r"listening on (http://[\d.]+:\d+)", self.log_path.read_text())
            if m:
                self.base = m.group(1)
                return self.base
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"server did not listen in {timeout} s:\n{self.log_path.read_text()}")

    def health_statuses(self, timeout: float = 300) -> list[int]:
        """Poll /health until 200: every status seen, in order (connection refused is skipped)."""
        seen, end = [], time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                status = call(self.base, "/health", timeout=5)[0]
            except OSError:
                status = None
            if status is not None and (not seen or seen[-1] != status):
                seen.append(status)
            if status == 200:
                return seen
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log_path.read_text()}")
            time.sleep(0.2)
        raise AssertionError(f"server not ready in {timeout} s (seen {seen}):\n{self.log_path.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class SlowRanker:
    """Ranks documents by text, descending, after `delay` seconds per batch; a query "boom" raises."""

    def __init__(self, delay: float):
        from perank_jax.weights.perank_config import PERankConfig
        self.config = PERankConfig.from_dict({"default_mode": "decode"}, "SlowRanker")
        self.delay, self.batches = delay, []

    @staticmethod
    def tokenizer(text, add_special_tokens=False):
        return {"input_ids": text.split()}

    def rerank_batch(self, queries, passage_lists, **kw):
        self.batches.append(list(queries))
        time.sleep(self.delay)
        if "boom" in queries:
            raise RuntimeError("planted failure")
        from perank_jax.inference.ranker import RerankStats
        self.last_stats = [RerankStats(len(p), 1, 10 + len(p), len(p), self.delay, 0.0, 0.0) for p in passage_lists]
        return [sorted(range(len(p)), key=lambda i: p[i], reverse=True) for p in passage_lists]


@contextmanager
def serving(ranker, **kw):
    """The real app and scheduler over `ranker` on a free loopback port, in this process: yields the base URL."""
    import uvicorn
    from perank_jax.serve.app import create_app
    from perank_jax.serve.metrics import ServeMetrics
    from perank_jax.serve.scheduler import Scheduler
    from perank_jax.serve.server import bind
    from perank_jax.serve.settings import ServeSettings
    settings = ServeSettings(window=None, **kw)
    metrics = ServeMetrics()
    scheduler = Scheduler(ranker, settings, metrics)
    server = uvicorn.Server(uvicorn.Config(create_app(scheduler, settings, metrics, tokenizer=ranker.tokenizer),
                                           lifespan="off", log_level="warning"))
    sock = bind("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    scheduler.start()
    thread.start()
    try:
        while not (server.started and scheduler.ready):
            time.sleep(0.01)
        yield "http://127.0.0.1:%d" % sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        scheduler.close(5)
        sock.close()
