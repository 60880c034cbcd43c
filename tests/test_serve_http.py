"""`perank serve` as a real process on loopback (tiny PE-Rank checkpoint + an embedding cache of its
encoder), called over HTTP: rankings equal PERanker.rerank's, both API shapes, batching without
mix-ups, bad input named, /health before and after warm-up, nothing compiled after warm-up, and
SIGTERM draining what is queued. One server for the module; the SIGTERM test ends it."""
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")

from helpers_serve import ServerProcess, call, metric  # noqa: E402
from perank_jax.data.embcache_build import build_embedding_cache  # noqa: E402
from perank_jax.inference.ranker import PERanker  # noqa: E402
from perank_jax.weights.encoder import load_encoder  # noqa: E402

WINDOW, STRIDE = 4, 2
DOCS = {f"d{i}": f"doc {i}{'ab' * (i % 2)}" for i in range(40)}
SERVE_ARGS = ["--window", str(WINDOW), "--stride", str(STRIDE), "--max-batch", "2", "--max-wait-ms", "100",
              "--max-query-tokens", "8", "--max-text-chars", "8", "--max-documents", "40", "--queue-size", "16",
              "--max-body-bytes", "20000"]


@pytest.fixture(scope="module")
def served(tiny_perank_dir_32, tmp_path_factory):
    """(server, the same model in this process as the server runs it, /health statuses from start to ready)."""
    root = tmp_path_factory.mktemp("serve")
    encoder = load_encoder(json.loads((tiny_perank_dir_32 / "config.json").read_text())["encoder_name"],
                           pooling="mean", max_length=512)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in DOCS.items()))
    cache = build_embedding_cache(encoder, root / "corpus.jsonl", root / "cache", progress=False)
    server = ServerProcess(["--model", str(tiny_perank_dir_32), "--embeddings", str(cache), *SERVE_ARGS],
                           root / "server.log")
    try:
        server.wait_listening()
        first = call(server.base, "/health")[0]        # answered once the model is loaded: warm-up runs
        ranker = PERanker.from_pretrained(tiny_perank_dir_32, share_prefix=False, embeddings=cache,
                                          passage_bucket=8)
        direct(ranker, "doc 1", [DOCS["d1"]] * WINDOW)  # compiles here while the server warms up
        yield server, ranker, [first] + server.health_statuses()
    finally:
        server.stop()


def direct(ranker, query, passages, docids=None):
    mode = ranker.config.get("default_mode") or "decode"
    return ranker.rerank(query, passages, window=WINDOW, stride=STRIDE, mode=mode, docids=docids)


def test_health_is_503_while_warming_up_and_200_once_ready(served):
    server, _, statuses = served
    assert statuses[0] == 503 and statuses[-1] == 200
    assert metric(server.base, "perank_ready") == 1 and metric(server.base, "perank_warmup_compiles") > 0


def test_v1_rerank_ranks_texts_and_cached_ids_as_the_library_does(served):
    server, ranker, _ = served
    ids = [f"d{i}" for i in range(3, 13)]
    status, _, got = call(server.base, "/v1/rerank", {"query": "doc 7ab", "documents": [DOCS[i] for i in ids]})
    assert status == 200
    assert [r["index"] for r in got["results"]] == direct(ranker, "doc 7ab", [DOCS[i] for i in ids])
    assert got["usage"]["processed_tokens"] == ranker.last_stats[0].processed_tokens > 0
    status, _, got = call(server.base, "/v1/rerank", {"query": "doc 5", "documents": [{"id": i} for i in ids]})
    assert status == 200 and got["meta"]["from_cache"] == len(ids) and got["meta"]["encoded_on_the_fly"] == 0
    assert [r["index"] for r in got["results"]] == direct(ranker, "doc 5", [""] * len(ids), docids=ids)


def test_top_n_return_documents_and_the_tei_shape(served):
    server, ranker, _ = served
    texts = [DOCS[f"d{i}"] for i in range(20, 26)]
    order = direct(ranker, "doc 22", texts)
    _, _, got = call(server.base, "/v1/rerank", {"query": "doc 22", "documents": texts, "top_n": 3,
                                                  "return_documents": True})
    assert [r["index"] for r in got["results"]] == order[:3]
    assert [r["relevance_score"] for r in got["results"]] == [1.0, 5 / 6, 4 / 6]
    assert [r["document"] for r in got["results"]] == [{"text": texts[i]} for i in order[:3]]
    _, _, got = call(server.base, "/v1/rerank", {"query": "doc 22", "documents": [{"id": "d20"}, {"id": "d21"}],
                                                  "return_documents": True})
    assert sorted(r["document"]["id"] for r in got["results"]) == ["d20", "d21"]
    _, _, got = call(server.base, "/v1/rerank", {"query": "doc 22", "documents": texts})
    assert len(got["results"]) == 6 and all("document" not in r for r in got["results"])
    status, _, tei = call(server.base, "/rerank", {"query": "doc 22", "texts": texts, "return_text": True})
    assert status == 200 and [r["index"] for r in tei] == order
    assert [r["text"] for r in tei] == [texts[i] for i in order] and tei[0]["score"] == 1.0


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_ranking(served):
    server, ranker, _ = served
    asks = [(f"doc {3 * q}", [DOCS[f"d{(3 * q + j) % 40}"] for j in range(3 + q)]) for q in range(8)]
    want = [direct(ranker, q, texts) for q, texts in asks]
    before = (metric(server.base, "perank_batch_size_sum"), metric(server.base, "perank_batch_size_count"))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda a: call(server.base, "/v1/rerank", {"query": a[0], "documents": a[1],
                                                                       "return_documents": True}), asks))
    for (q, texts), w, (status, _, g) in zip(asks, want, got):
        assert status == 200 and [r["index"] for r in g["results"]] == w
        assert [r["document"]["text"] for r in g["results"]] == [texts[i] for i in w]    # its own documents
    requests = metric(server.base, "perank_batch_size_sum") - before[0]
    batches = metric(server.base, "perank_batch_size_count") - before[1]
    assert requests == 8 and batches < 8 and max(g["meta"]["batch_size"] for _, _, g in got) > 1


BAD = [  # (path, body or raw bytes, status, field)
    ("/v1/rerank", b'{"query": "q", "documents": ["a"', 422, "body"),
    ("/v1/rerank", b"[1, 2]", 422, "body"),
    ("/v1/rerank", {"documents": ["a"]}, 422, "query"),
    ("/v1/rerank", {"query": "  ", "documents": ["a"]}, 422, "query"),
    ("/v1/rerank", {"query": 7, "documents": ["a"]}, 422, "query"),
    ("/v1/rerank", {"query": "q " * 20, "documents": ["a"]}, 422, "query"),
    ("/v1/rerank", {"query": "q"}, 422, "documents"),
    ("/v1/rerank", {"query": "q", "documents": []}, 422, "documents"),
    ("/v1/rerank", {"query": "q", "documents": "a"}, 422, "documents"),
    ("/v1/rerank", {"query": "q", "documents": ["a"] * 41}, 422, "documents"),
    ("/v1/rerank", {"query": "q", "documents": ["a", 5]}, 422, "documents[1]"),
    ("/v1/rerank", {"query": "q", "documents": ["a", ""]}, 422, "documents[1]"),
    ("/v1/rerank", {"query": "q", "documents": ["x" * 9]}, 422, "documents[0]"),
    ("/v1/rerank", {"query": "q", "documents": [{"text": 3}]}, 422, "documents[0].text"),
    ("/v1/rerank", {"query": "q", "documents": [{}]}, 422, "documents[0]"),
    ("/v1/rerank", {"query": "q", "documents": [{"id": "nope"}]}, 422, "documents[0].id"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": "2"}, 422, "top_n"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "return_documents": "yes"}, 422, "return_documents"),
    ("/rerank", {"query": "q", "texts": "abc"}, 422, "texts"),
    ("/rerank", {"query": "q", "texts": ["a", None]}, 422, "texts[1]"),
    ("/v1/rerank", {"query": "q", "documents": ["a" * 16] * 1300}, 413, "body"),
]


@pytest.mark.parametrize("path,body,status,field", BAD, ids=[f"{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_gets_its_status_and_an_error_naming_the_field(served, path, body, status, field):
    server = served[0]
    raw = body if isinstance(body, bytes) else None
    got_status, _, got = call(server.base, path, None if raw else body, raw=raw)
    assert (got_status, got["error"]["field"]) == (status, field), got
    assert got["error"]["message"]
    assert call(server.base, "/health")[0] == 200


def test_nothing_compiles_after_warm_up_while_serving_these_shapes(served):
    server = served[0]          # after every test above: 1-40 documents, 1-2 requests per batch
    assert metric(server.base, "perank_batch_size_count") > 0
    assert metric(server.base, "perank_warmup_compiles") > 0
    assert metric(server.base, "perank_compiles_after_warmup") == 0


def test_sigterm_drains_the_queued_requests_and_exits_0(served):
    server, ranker, _ = served
    texts = list(DOCS.values())                                    # 40 documents: 19 windows each

    def ask(i):
        status, _, got = call(server.base, "/v1/rerank", {"query": f"doc {i}", "documents": texts})
        return status, time.monotonic(), [r["index"] for r in got["results"]] if status == 200 else got
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, i) for i in range(8)]
        end = time.monotonic() + 60
        while metric(server.base, "perank_queue_depth") == 0:     # a batch runs, the next ones wait
            assert time.monotonic() < end and not all(f.done() for f in futures), "nothing was ever queued"
            time.sleep(0.005)
        sent = time.monotonic()
        server.proc.terminate()
        answers = [f.result() for f in futures]
    assert [a[0] for a in answers] == [200] * 8
    assert max(a[1] for a in answers) > sent                       # answered after SIGTERM: drained
    assert answers[5][2] == direct(ranker, "doc 5", texts)
    assert server.proc.wait(60) == 0
    assert "stopped (queue drained)" in server.log_path.read_text()
