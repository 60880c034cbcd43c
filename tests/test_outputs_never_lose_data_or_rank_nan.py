"""The second fault battery (issue 24), driven as a user drives it (`perank ...` through cli.main;
real processes where locks and signals are involved). One section per class of defect:
  A. lost data: an output that is an input, a user's files in an output directory, two writers
     into one directory, a run and its stats sidecar committed together, stale temps
  B. silently wrong results: NaN/inf scores, non-finite flags, resuming with other settings,
     work dropped without a word
  C. late or misleading errors: pipes, checks before the work, errors that name their file
The first battery is tests/test_cli_faults.py."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers_cli import one_line_error
from perank_jax.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY_TRAIN = str(ROOT / "configs" / "tiny.stage2.yaml")


@pytest.fixture()
def t(tmp_path):
    """Small valid inputs of every retrieval format."""
    (tmp_path / "qrels.txt").write_text("q1 0 d1 2\nq2 0 d3 1\n")
    (tmp_path / "run.trec").write_text("q1 Q0 d1 1 3.0 x\nq1 Q0 d2 2 2.0 x\nq2 Q0 d3 1 1.0 x\n")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": x}) + "\n" for d, x in
                                                   [("d1", "cats purr"), ("d2", "dogs bark"), ("d3", "rivers flow")]))
    (tmp_path / "queries.tsv").write_text("q1\tcats\nq2\trivers\n")
    (tmp_path / "req.jsonl").write_text(requests_jsonl(2, 3))
    return tmp_path


def requests_jsonl(n_queries, n_cands, query=lambda q: f"query {q}", text=lambda i: f"passage number {i}"):
    cands = lambda: [{"docid": f"d{i}", "doc": {"contents": text(i)}, "score": 9.0 - i}  # noqa: E731
                     for i in range(n_cands)]
    return "".join(json.dumps({"query": {"text": query(q), "qid": str(q)}, "candidates": cands()}) + "\n"
                   for q in range(1, n_queries + 1))


def snapshot(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# --- A. lost data ----------------------------------------------------------------------------
def same_file_cases(t):
    os.link(t / "run.trec", t / "hardlink.trec")
    (t / "symlink.json").symlink_to(t / "qrels.txt")
    rerank = ["rerank", "--run", str(t / "run.trec"), "--corpus", str(t / "corpus.jsonl"),
              "--queries", str(t / "queries.tsv")]
    ev = ["evaluate", "--qrels", str(t / "qrels.txt"), "--run", str(t / "run.trec")]
    return [
        ([*rerank, "--out", str(t / "run.trec")], "input --run"),
        (["rerank", "--requests", str(t / "req.jsonl"), "--out", str(t / "req.jsonl")], "input --requests"),
        ([*rerank, "--out", str(t / "new.trec"), "--stats", str(t / "queries.tsv")], "input --queries"),
        ([*rerank, "--out", str(t / "corpus.jsonl")], "input --corpus"),
        ([*ev, "--json", str(t / "qrels.txt")], "input --qrels"),
        ([*ev, "--json", str(t / "hardlink.trec")], "input --run"),        # a hard link of the run
        ([*ev, "--json", str(t / "symlink.json")], "input --qrels"),       # a symlink to the qrels
        (["retrieve", "--corpus", str(t / "corpus.jsonl"), "--queries", str(t / "queries.tsv"),
          "--out", str(t / "queries.tsv")], "input --queries"),
    ]


@pytest.mark.parametrize("i", range(8))
def test_an_output_that_is_also_an_input_is_refused_before_any_work(t, capsys, i):
    argv, expect = same_file_cases(t)[i]
    before = snapshot(t)
    one_line_error(capsys, main(argv), expect)
    assert snapshot(t) == before


def test_encode_refuses_an_out_directory_holding_a_users_docids_txt(t, capsys):
    out = t / "mine"
    out.mkdir()
    (out / "docids.txt").write_text("the user's list\n")
    one_line_error(capsys, main(["encode", "--encoder", str(t / "no-encoder"), "--corpus", str(t / "corpus.jsonl"),
                                 "--out", str(out)]), "holds docids.txt that `perank encode` did not write")
    assert snapshot(out) == {"docids.txt": b"the user's list\n"}


def test_train_refuses_an_output_dir_of_someone_elses_files_and_accepts_its_own_runs(t, capsys):
    from perank_jax.core.outputs import claim_dir
    out = t / "exp"
    out.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        (out / name).write_text(f"the user's {name}\n")
    before = snapshot(out)
    one_line_error(capsys, main(["train", TINY_TRAIN, f"output_dir={out}"]),
                   "holds config.yaml, metrics.jsonl, summary.json that `perank train` did not write")
    assert snapshot(out) == before
    (t / "ours").mkdir()
    claim_dir(t / "ours", "train", ["config.yaml"])            # a run of ours is marked ...
    (t / "ours" / "config.yaml").write_text("ours\n")
    claim_dir(t / "ours", "train", ["config.yaml"])            # ... so resuming it is allowed
    (t / "legacy" / "checkpoints").mkdir(parents=True)         # a run from before the marker existed
    (t / "legacy" / "config.yaml").write_text("ours\n")
    claim_dir(t / "legacy", "train", ["config.yaml"], ours=["checkpoints"])


def test_tables_refuses_an_out_dir_holding_a_users_tables_md(t, capsys):
    (t / "paper").mkdir()
    (t / "paper" / "tables.md").write_text("my draft\n")
    (t / "t.yaml").write_text(json.dumps({
        "out_dir": str(t / "paper"), "methods": [{"name": "bm25", "kind": "first_stage"}],
        "datasets": [{"name": "x", "requests": str(t / "req.jsonl"), "qrels": str(t / "qrels.txt")}]}))
    one_line_error(capsys, main(["tables", str(t / "t.yaml")]), "holds tables.md that `perank tables` did not write")
    assert snapshot(t / "paper") == {"tables.md": b"my draft\n"}


LOCKER = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
          "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)")


@pytest.mark.parametrize("command", ["train", "encode"])
def test_a_second_writer_into_a_locked_directory_refuses_and_a_killed_holder_releases_it(t, capsys, command):
    out = t / "busy"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = (["train", TINY_TRAIN, f"output_dir={out}"] if command == "train" else
                ["encode", "--encoder", str(t / "no-encoder"), "--corpus", str(t / "corpus.jsonl"), "--out", str(out)])
        one_line_error(capsys, main(argv), f"another `perank {command}` is writing into this directory")
        assert list(out.iterdir()) == []                           # no .partial/, no marker
    finally:
        holder.kill()                                              # a crash: the lock goes with the process
        holder.wait()
    from perank_jax.core.outputs import dir_lock
    with dir_lock(out, command):
        pass


def test_a_run_and_its_sidecar_change_together_or_not_at_all(tmp_path, monkeypatch):
    from perank_jax.core import outputs
    from perank_jax.core.atomic import atomic_text
    run, stats = tmp_path / "o.trec", tmp_path / "o.trec.stats.jsonl"
    run.write_text("old run\n")
    stats.write_text("old stats\n")

    def full_disk(tmp):
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):                                   # the second file fails: neither changes
        outputs.commit_files([(run, lambda p: atomic_text(p, "new run\n")), (stats, full_disk)])
    assert (run.read_text(), stats.read_text()) == ("old run\n", "old stats\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.trec", "o.trec.stats.jsonl"]

    real = os.replace

    def killed_after_first_rename(a, b):                           # SIGKILL between the two renames
        if Path(b) == stats.resolve():
            raise SystemExit("killed")
        return real(a, b)
    monkeypatch.setattr(outputs.os, "replace", killed_after_first_rename)
    with pytest.raises(SystemExit):
        outputs.commit_files([(run, lambda p: atomic_text(p, "new run\n")),
                              (stats, lambda p: atomic_text(p, "new stats\n"))])
    monkeypatch.setattr(outputs.os, "replace", real)
    assert run.read_text() == "new run\n" and stats.read_text() == "old stats\n"    # the torn state ...
    assert outputs.recover_commit(run)                                            # ... the next run repairs
    assert (run.read_text(), stats.read_text()) == ("new run\n", "new stats\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.trec", "o.trec.stats.jsonl"]


def test_temps_left_by_a_killed_process_are_cleaned_by_the_next_run_and_nothing_else(tmp_path):
    from perank_jax.core.atomic import fresh_temp
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".hf.{dead.pid}-abcd1234.tmp"             # a killed `perank convert`'s temp dir
    (stale / "big").mkdir(parents=True)
    (stale / "big" / "model.safetensors").write_bytes(b"x" * 1000)
    live = tmp_path / f".hf.{os.getppid()}-abcd1234.tmp"           # a running process's temp: kept
    live.mkdir()
    for name in (".hf.tmp", f".hf.{dead.pid}.tmp", "notes.txt"):     # not our naming: kept
        (tmp_path / name).write_text("the user's\n")
    new = fresh_temp(tmp_path / "hf", directory=True)
    assert not stale.exists() and live.exists() and new.name.startswith(f".hf.{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".hf.tmp", f".hf.{dead.pid}.tmp", "notes.txt", live.name, new.name])


# --- B. silently wrong results -----------------------------------------------------------------
@pytest.fixture(scope="module")
def nan_checkpoint(tiny_perank, tmp_path_factory):
    """The tiny checkpoint whose final norm weights are huge but finite (so loading accepts them):
    the hidden state overflows, and every passage score becomes inf or NaN."""
    import shutil
    from safetensors.numpy import load_file, save_file
    dst = tmp_path_factory.mktemp("nan") / "ckpt"
    shutil.copytree(tiny_perank[0], dst)
    tensors = load_file(dst / "model.safetensors")
    tensors["model.norm.weight"][:] = 3e38
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("mode", ["decode", "single_pass"])
def test_nan_scores_are_refused_naming_the_query_never_written_as_a_ranking(t, capsys, nan_checkpoint, mode):
    out = t / "out.trec"
    out.write_text("previous run\n")
    code = main(["rerank", "--model", str(nan_checkpoint), "--requests", str(t / "req.jsonl"), "--out", str(out),
                 "--mode", mode])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]                  # after the progress bar's line
    assert last.startswith("perank rerank: error: query '1': the decoder's passage scores are NaN or inf "
                           "(likely a NaN/inf weight"), err
    assert out.read_text() == "previous run\n"


@pytest.mark.parametrize("argv,expect", [
    (["--query-scale", "inf"], "--query-scale must be > 0 and <= 1e+06, got inf"),
    (["--query-scale", "1e300"], "--query-scale must be > 0 and <= 1e+06, got 1e+300"),
    (["--query-feedback", "inf", "0.01"], "--query-feedback must be a finite number, got inf"),
    (["--query-feedback", "0.5", "inf"], "--query-feedback must be a finite number, got inf"),
])
def test_a_non_finite_or_absurd_factor_is_a_usage_error(capsys, argv, expect):
    one_line_error(capsys, main(["rerank", *argv]), expect)


class FakeManager:
    """An orbax manager stand-in holding one checkpoint's metadata."""
    directory = "out/checkpoints"

    def __init__(self, meta):
        self.meta = meta

    def latest_step(self):
        return 5

    def restore(self, step, args):
        return {"meta": json.loads(json.dumps(self.meta)), "state": "restored"}


@pytest.mark.parametrize("override,expect", [("optim.lr=1e-4", "optim.lr: 0.001 -> 0.0001"),
                                             ("data.embeddings=other.npz", "data.embeddings: x.npz -> other.npz")])
def test_resuming_training_with_other_settings_is_refused_naming_them(override, expect):
    from perank_jax.core.config import ConfigError
    from perank_jax.train.checkpointing import restore_state, run_settings
    from perank_jax.train.config import load_train_config
    base = ["data.embeddings=x.npz", "optim.lr=1e-3"]
    saved = {"stage": 2, "settings": run_settings(load_train_config(TINY_TRAIN, base))}
    again = run_settings(load_train_config(TINY_TRAIN, [*base, "optim.max_steps=50", "output_dir=y"]))
    assert restore_state(FakeManager(saved), {}, {"stage": 2, "settings": again}) == ("restored", 5)
    now = run_settings(load_train_config(TINY_TRAIN, [*base, override]))
    with pytest.raises(ConfigError, match=expect.replace(".", r"\.")):
        restore_state(FakeManager(saved), {}, {"stage": 2, "settings": now})


def test_dropped_candidates_and_truncated_passages_are_reported_once(t, capsys, tiny_perank):
    long = lambda i: "word " * 700 if i == 0 else f"passage number {i}"    # noqa: E731  (> 512 encoder tokens)
    (t / "req.jsonl").write_text(requests_jsonl(2, 6, text=long))
    assert main(["rerank", "--model", str(tiny_perank[0]), "--requests", str(t / "req.jsonl"), "--depth", "4",
                 "--window", "0", "--out", str(t / "o.trec")]) == 0
    err = capsys.readouterr().err
    assert err.count("2 of 2 queries have more than --depth 4 candidates (up to 6)") == 1, err
    assert err.count("2 passages were longer than the encoder's max_length (512 tokens)") == 1, err
    assert len((t / "o.trec").read_text().splitlines()) == 8


def test_top_k_under_single_pass_is_refused_not_ignored(t, capsys, tiny_perank):
    one_line_error(capsys, main(["rerank", "--model", str(tiny_perank[0]), "--requests", str(t / "req.jsonl"),
                                 "--mode", "single_pass", "--top-k", "2"]), "top_k=2 has no effect in single_pass")


def test_generate_refuses_a_prompt_longer_than_the_models_context(capsys, tiny_mistral_dir):
    one_line_error(capsys, main(["generate", "--model", str(tiny_mistral_dir), "word " * 300]),
                   "over the model's context of 256 tokens")


# --- C. late or misleading errors ----------------------------------------------------------------
def test_queries_and_corpus_from_pipes_are_read_once(t, capsys):
    fifos = {}
    for name in ("corpus.jsonl", "queries.tsv"):
        fifos[name] = t / f"{name}.fifo"
        os.mkfifo(fifos[name])

    done = threading.Event()

    def feed(name):
        with open(fifos[name], "w") as f:
            f.write((t / name).read_text())
        while not done.wait(0.05):        # a reader opening the pipe again gets EOF, not a hang
            try:
                os.close(os.open(fifos[name], os.O_WRONLY | os.O_NONBLOCK))
            except OSError:               # ENXIO: nobody is reading
                pass
    threads = [threading.Thread(target=feed, args=(n,), daemon=True) for n in fifos]
    for th in threads:
        th.start()
    try:
        code = main(["retrieve", "--corpus", str(fifos["corpus.jsonl"]), "--queries", str(fifos["queries.tsv"]),
                     "--out", str(t / "bm25.trec"), "--stemmer", "none"])
    finally:
        done.set()
    assert code == 0, capsys.readouterr().err
    assert [ln.split()[:3] for ln in (t / "bm25.trec").read_text().splitlines()] == [["q1", "Q0", "d1"],
                                                                                    ["q2", "Q0", "d3"]]


def test_an_empty_passage_is_named_by_file_and_line_before_the_model_loads(t, capsys):
    (t / "corpus.jsonl").write_text('{"_id": "d1", "text": "cats"}\n{"_id": "d2", "text": "  "}\n'
                                    '{"_id": "d3", "text": "rivers"}\n')
    one_line_error(capsys, main(["rerank", "--model", str(t / "no-such-model"), "--run", str(t / "run.trec"),
                                 "--corpus", str(t / "corpus.jsonl"), "--queries", str(t / "queries.tsv")]),
                   "corpus.jsonl:2: document 'd2' has empty text")
    (t / "req.jsonl").write_text(requests_jsonl(1, 3, text=lambda i: "" if i == 2 else "x"))
    one_line_error(capsys, main(["rerank", "--model", str(t / "no-such-model"), "--requests", str(t / "req.jsonl")]),
                   "req.jsonl:1: candidates[2]: document 'd2' has empty text")


def test_a_query_too_long_for_the_decoder_is_named_before_any_query_is_reranked(t, capsys, tiny_perank,
                                                                                monkeypatch):
    from perank_jax.inference.ranker import PERanker
    (t / "req.jsonl").write_text(requests_jsonl(3, 3, query=lambda q: "word " * 5000 if q == 3 else f"query {q}"))
    ranked = []
    real = PERanker.rerank_batch
    monkeypatch.setattr(PERanker, "rerank_batch", lambda self, qs, *a, **k: ranked.extend(qs) or real(self, qs, *a, **k))
    one_line_error(capsys, main(["rerank", "--model", str(tiny_perank[0]), "--requests", str(t / "req.jsonl"),
                                 "--out", str(t / "o.trec")]), "query '3': prompt for 3 passages is")
    assert ranked == [] and not (t / "o.trec").exists()


def test_a_full_disk_names_the_output_file(t, capsys, monkeypatch):
    import perank_jax.core.atomic as atomic

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomic, "target_mode", full)
    one_line_error(capsys, main(["evaluate", "--qrels", str(t / "qrels.txt"), "--run", str(t / "run.trec"),
                                 "--json", str(t / "res.json")]), f"{t / 'res.json'}: No space left on device")
    assert not (t / "res.json").exists() and not [p for p in t.iterdir() if p.name.endswith(".tmp")]


def test_an_unwritable_output_directory_is_refused_before_the_work(t, capsys, monkeypatch):
    ro = t / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    one_line_error(capsys, main(["evaluate", "--qrels", str(t / "qrels.txt"), "--run", str(t / "run.trec"),
                                 "--json", str(ro / "res.json")]), f"cannot write into {ro}")


def test_a_checkpoint_save_failing_in_the_background_is_reported_once_not_per_thread(monkeypatch):
    """A full disk during `perank train` printed ~47 tracebacks (orbax threads logging the error,
    tensorstore callbacks reporting "Event loop is closed" as unraisable) around the one error the
    main thread raises. Checked by hand on a full 2 MB tmpfs: one line, exit 2."""
    import asyncio
    import logging
    from perank_jax.train.checkpointing import quiet_failed_saves
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        closed = e
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))

    class Unraisable:
        def __init__(self, e):
            self.exc_type, self.exc_value, self.exc_traceback = type(e), e, e.__traceback__
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("absl").addHandler(handler)
    try:
        with quiet_failed_saves():
            sys.unraisablehook(Unraisable(closed))                             # dropped
            sys.unraisablehook(Unraisable(RuntimeError("something else")))    # passed on
            for path in ("/x/orbax/checkpoint/future.py", "/x/mine.py"):
                logging.getLogger("absl").handle(logging.LogRecord("absl", logging.ERROR, path, 1, "boom", (), None))
    finally:
        logging.getLogger("absl").removeHandler(handler)
    assert seen == ["something else"]
    assert [r.pathname for r in records] == ["/x/mine.py"]
