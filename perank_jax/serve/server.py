"""Run a rerank server: bind, load the ranker, start the scheduler (warm-up), serve, drain on SIGTERM.

The port is bound before the model loads (a port in use is one error line, nothing loaded) and
handed to uvicorn; port 0 takes a free one, printed in the first line `perank serve: listening on
http://HOST:PORT`. SIGTERM or Ctrl-C: stop accepting, let every queued request finish (within
`drain_s`), then return 0.
"""
from __future__ import annotations

import logging
import signal
import socket

from perank_jax.serve.settings import ServeSettings

log = logging.getLogger("perank.serve")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (OSError naming the address when it cannot be had)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_server(settings: ServeSettings, *, model=None, encoder=None, embeddings=None, host: str = "127.0.0.1",
               port: int = 8000, mesh=None, dtype: str = "float32", share_prefix: bool | str = "head",
               log_level: str = "info") -> None:
    """Serve until SIGTERM / Ctrl-C, then drain and return (ValueError if loading or warm-up fails)."""
    try:
        import uvicorn
        from perank_jax.serve.app import create_app
    except ImportError as e:
        raise ValueError(f"perank serve needs the serve extra: pip install 'perank-jax[serve]' ({e})") from None
    from perank_jax.inference.ranker import PERanker
    from perank_jax.serve.metrics import ServeMetrics
    from perank_jax.serve.scheduler import Scheduler
    from perank_jax.serve.warmup import warm_up

    logging.basicConfig(level=getattr(logging, log_level.upper()), format="%(asctime)s %(name)s: %(message)s")
    sock = bind(host, port)
    host_, port_ = sock.getsockname()[:2]
    print(f"perank serve: listening on http://{host_}:{port_} (loading the model; /health turns 200 once "
          f"warm-up has compiled)", flush=True)
    if mesh is not None:
        from perank_jax.core.sharding import make_mesh
        mesh = make_mesh(mesh)
    ranker = PERanker.from_pretrained(model, encoder_path=encoder, dtype=dtype, mesh=mesh, embeddings=embeddings,
                                      share_prefix=share_prefix, passage_bucket=settings.passage_bucket,
                                      rules=settings.sharding_rules)
    metrics = ServeMetrics()
    holder = {}

    def warm(r):
        from perank_jax.serve.metrics import compile_count
        before = compile_count()
        done = warm_up(r, settings, scheduler.mode)
        metrics.mark_ready(done["seconds"], compile_count() - before)
        log.info("ready: warm-up compiled %d executables in %.1f s (%d batches)",
                 compile_count() - before, done["seconds"], done["batches"])

    def fatal(e):
        if "server" in holder:
            holder["server"].should_exit = True

    scheduler = Scheduler(ranker, settings, metrics, warmup=warm, on_fatal=fatal)
    cache_index = ranker.embeddings.index if ranker.embeddings is not None else None
    app = create_app(scheduler, settings, metrics, tokenizer=ranker.tokenizer, cache_index=cache_index)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=settings.drain_s)
    server = holder["server"] = uvicorn.Server(config)
    quiet = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:                      # uvicorn re-raises the signal it caught after shutdown: to these no-ops
        scheduler.start()
        server.run(sockets=[sock])
    finally:
        for s, h in quiet.items():
            signal.signal(s, h)
        scheduler.close(settings.drain_s)
        sock.close()
    if scheduler.failed is not None:
        raise ValueError(f"warm-up failed: {type(scheduler.failed).__name__}: {scheduler.failed}")
    print("perank serve: stopped (queue drained)", flush=True)
