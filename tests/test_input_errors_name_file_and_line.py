"""Every bad input file gives ONE line `perank <cmd>: error: FILE:LINE: ...` (exit 2, no traceback)
that names the file, the line (and the field) and what to do, whichever command reads it:
bytes that are not UTF-8 in any text input, non-numeric scores in rank_llm requests, damaged
projector weight files, empty or malformed training JSONL. Driven as a user drives it
(`perank ...` through cli.main; one real subprocess)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from perank_jax.cli import main
from perank_jax.data import trec

ROOT = Path(__file__).resolve().parent.parent
LATIN1 = "caf\xe9".encode("latin-1")          # 'café' in latin-1: byte 0xe9 is not UTF-8 here


def error_line(capsys, argv) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"perank {argv[0]}: error: "), err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.fixture()
def files(tmp_path):
    """Good inputs of every retrieval format (each command works on these)."""
    t = tmp_path
    (t / "corpus.jsonl").write_text('{"_id": "d1", "text": "cats purr"}\n{"_id": "d2", "text": "dogs bark"}\n')
    (t / "queries.tsv").write_text("q1\tcats\nq2\tdogs\n")
    (t / "run.trec").write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0 x\nq2 Q0 d2 1 1.0 x\n")
    (t / "qrels.txt").write_text("q1 0 d1 1\nq2 0 d2 1\n")
    (t / "req.jsonl").write_text("".join(json.dumps(request(q)) + "\n" for q in ("1", "2")))
    return t


def request(qid, **cand):
    cands = [{"docid": "a", "score": 2.0, "doc": {"text": "alpha"}},
             {"docid": "b", "score": 1.0, "doc": {"text": "beta"}, **cand}]
    return {"query": {"qid": qid, "text": "query " + qid}, "candidates": cands}


def latin1_on_line_2(path: Path) -> Path:
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(lines[1][:2], lines[1][:2] + LATIN1, 1)
    path.write_bytes(b"\n".join(lines))
    return path


def argv_for(kind, t):
    """(argv, the file it reads as `kind`)"""
    rerank = ["rerank", "--run", str(t / "run.trec"), "--corpus", str(t / "corpus.jsonl"),
              "--queries", str(t / "queries.tsv")]
    evaluate = ["evaluate", "--qrels", str(t / "qrels.txt"), "--run", str(t / "run.trec")]
    return {"corpus": (rerank, t / "corpus.jsonl"),
            "corpus_encode": (["encode", "--encoder", str(t / "unused"), "--corpus", str(t / "corpus.jsonl"),
                               "--out", str(t / "cache")], t / "corpus.jsonl"),
            "queries": (rerank, t / "queries.tsv"),
            "run": (evaluate, t / "run.trec"),
            "qrels": (evaluate, t / "qrels.txt"),
            "requests": (["rerank", "--requests", str(t / "req.jsonl")], t / "req.jsonl")}[kind]


# --- non-UTF-8 bytes, in every text input -----------------------------------------------------
@pytest.mark.parametrize("kind", ["corpus", "corpus_encode", "queries", "run", "qrels", "requests"])
def test_non_utf8_bytes_name_file_line_byte_and_column(files, capsys, kind):
    argv, path = argv_for(kind, files)
    latin1_on_line_2(path)
    err = error_line(capsys, argv)
    assert f"{path}:2: not valid UTF-8 (byte 0xe9 at column 6)" in err, err
    assert "re-encode the file as UTF-8" in err
    assert not (files / "cache").exists()


def test_a_utf16_file_is_recognised_and_a_bom_is_accepted(files, capsys):
    q = files / "queries.tsv"
    q.write_bytes("q1\tcats\n".encode("utf-16"))
    err = error_line(capsys, argv_for("queries", files)[0])
    assert f"{q}:1: not valid UTF-8 (byte 0xff at column 1)" in err and "iconv -f utf-16" in err, err
    q.write_bytes(b"\xef\xbb\xbf" + b'{"qid": "q1", "query": "cats"}\n')   # UTF-8 with a BOM: fine
    assert dict(trec.read_queries(q)) == {"q1": "cats"}


def test_missing_files_and_directories_are_one_line(files, capsys):
    err = error_line(capsys, ["evaluate", "--qrels", str(files / "nope.txt"), "--run", str(files / "run.trec")])
    assert f"{files / 'nope.txt'}: file not found" in err
    (files / "adir").mkdir()
    err = error_line(capsys, ["evaluate", "--qrels", str(files / "qrels.txt"), "--run", str(files / "adir")])
    assert f"{files / 'adir'}: is a directory, expected a file" in err


# --- rank_llm requests: scores and ranks --------------------------------------------------------
@pytest.mark.parametrize("field,value,expect", [
    ("score", "high", "field candidates[1].score is 'high', expected a finite number"),
    ("score", float("nan"), "field candidates[1].score is nan, expected a finite number"),
    ("score", float("inf"), "field candidates[1].score is inf, expected a finite number"),
    ("score", [1.0], "field candidates[1].score is [1.0], expected a finite number"),
    ("score", True, "field candidates[1].score is True, expected a finite number"),
    ("rank", "first", "field candidates[1].rank is 'first', expected an integer"),
    ("rank", 1.5, "field candidates[1].rank is 1.5, expected an integer"),
    ("docid", {"x": 1}, "field candidates[1].docid is {'x': 1}, expected a non-empty string or integer id"),
])
def test_a_bad_request_field_names_file_line_and_field(files, capsys, field, value, expect):
    req = files / "req.jsonl"
    req.write_text(json.dumps(request("1")) + "\n" + json.dumps(request("2", **{field: value})) + "\n")
    err = error_line(capsys, ["rerank", "--requests", str(req), "--out", str(files / "out.trec")])
    assert f"{req}:2: {expect}" in err, err
    assert not (files / "out.trec").exists()


@pytest.mark.parametrize("line,expect", [
    ('{"query": {"qid": "2", "text": "x"}, "candidates": [{"docid": "a", "score": ' + "9" * 5000 + "}]}",
     "not usable JSON (a number too long or nesting too deep)"),
    ("[" * 100000, "not usable JSON (a number too long or nesting too deep)"),
    ('{"query": {"qid": "2", "text": "x"}, "candidates": [', "not valid JSON (Expecting value at column 53)"),
])
def test_json_the_parser_cannot_take_names_file_and_line(files, capsys, line, expect):
    req = files / "req.jsonl"
    req.write_text(json.dumps(request("1")) + "\n" + line + "\n")
    err = error_line(capsys, ["rerank", "--requests", str(req)])
    assert f"{req}:2: {expect}" in err, err


def test_numeric_string_scores_and_integer_ranks_still_read(files):
    req = files / "req.jsonl"
    req.write_text(json.dumps(request("1", score="0.5", rank=2)) + "\n")
    (r,) = trec.read_requests(req)
    assert [c.docid for c in r.candidates] == ["a", "b"] and r.candidates[1].score == 0.5


def test_non_string_texts_are_named(files, capsys):
    c = files / "corpus.jsonl"
    c.write_text('{"_id": "d1", "text": "cats"}\n{"_id": "d2", "text": ["dogs"]}\n')
    err = error_line(capsys, argv_for("corpus", files)[0])
    assert f"{c}:2: document text must be a string, got list" in err, err


# --- training: data files and projector weights --------------------------------------------------
@pytest.fixture(scope="module")
def train_files(tmp_path_factory):
    from fixtures import make_decoder_dir, make_tokenizer, stage2_records, table_file, write_jsonl
    root = tmp_path_factory.mktemp("train_inputs")
    make_decoder_dir(root / "dec", make_tokenizer())
    records, table = stage2_records(8)
    table_file(root / "emb.npz", table)
    write_jsonl(root / "good.jsonl", records)
    return root, records


def train_argv(root, out, train, *extra):
    return ["train", str(ROOT / "configs" / "tiny.stage2.yaml"), f"model.decoder={root / 'dec'}",
            f"data.train={train}", f"data.embeddings={root / 'emb.npz'}", f"output_dir={out}",
            "xla_options={xla_backend_optimization_level: 0}", *extra]


def lines_file(path, lines) -> Path:
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))
    return path


@pytest.mark.parametrize("case", ["empty", "blank_lines", "bad_json", "too_deep", "not_object", "latin1",
                                  "missing_field", "two_bad_records", "bad_message"])
def test_bad_training_jsonl_names_file_line_and_field(train_files, tmp_path, capsys, case):
    root, records = train_files
    good = [json.dumps(r) for r in records]
    p = tmp_path / "train.jsonl"
    no_ranking = json.dumps({k: v for k, v in records[2].items() if k != "ranking"})
    bad_msg = json.dumps(dict(records[2], messages_wo_content=[{"role": "user"}]))
    lines, expect = {
        "empty": ([], f"{p}: no records (empty file)"),
        "blank_lines": (["", "  "], f"{p}: no records (empty file)"),
        "bad_json": ([good[0], '{"ranking": [0, 1,'], f"{p}:2: not valid JSON (Expecting value at column 19)"),
        "too_deep": ([good[0], "[" * 100000], f"{p}:2: not usable JSON (a number too long or nesting too deep)"),
        "not_object": ([good[0], "[1, 2]"], f"{p}:2: expected a JSON object, got list"),
        "latin1": ([good[0], "", b'{"x": "' + LATIN1 + b'"}'], f"{p}:3: not valid UTF-8 (byte 0xe9 at column 11)"),
        "missing_field": ([good[0], "", good[1], no_ranking, *good[3:]],
                          f"{p}:4: record 2 (line 4): missing field 'ranking'"),
        "two_bad_records": ([good[0], no_ranking, good[1], "", no_ranking],
                            f"{p}:2: record 1 (line 2): missing field 'ranking'"),
        "bad_message": ([good[0], bad_msg],
                        f"{p}:2: record 1 (line 2): field 'messages_wo_content'[0] is not a message"),
    }[case]
    lines_file(p, lines)
    err = error_line(capsys, train_argv(root, tmp_path / "out", p))
    assert expect in err, err
    if case == "two_bad_records":
        assert "1 more bad record(s): line 5: missing field 'ranking'" in err, err
    if case in ("missing_field", "two_bad_records", "bad_message"):
        assert "nothing was trained" in err


def _npz_bytes(tmp_path):
    from perank_jax.models.projector import build_projector
    p = build_projector("mlp2x_gelu", 16, 32)
    np.savez(tmp_path / "proj.npz", **p.export_torch())
    return (tmp_path / "proj.npz").read_bytes()


@pytest.mark.parametrize("case,why", [
    ("truncated", "BadZipFile"),
    ("garbage", "not a zip archive"),
    ("flipped", "Bad CRC-32"),
    ("pickled", "pickled object arrays, which are never loaded"),
    ("npy", "a .npy file holds one unnamed array"),
])
def test_a_damaged_projector_file_is_one_line_naming_it(train_files, tmp_path, capsys, case, why):
    root, _ = train_files
    data = _npz_bytes(tmp_path)
    bad = tmp_path / ("proj.npy" if case == "npy" else "bad.npz")
    if case == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif case == "garbage":
        bad.write_bytes(b"\x00" * 64)
    elif case == "flipped":
        b = bytearray(data)
        b[120] ^= 0xFF                        # inside the first member's data
        bad.write_bytes(bytes(b))
    elif case == "pickled":
        np.savez(bad, **{"model.projector.0.weight": np.array([{"a": 1}], dtype=object)})
    else:
        np.save(bad, np.zeros((32, 16), np.float32))
    err = error_line(capsys, train_argv(root, tmp_path / "out", root / "good.jsonl",
                                        f"model.projector_init={bad}"))
    assert f"{bad}: not a valid npz/safetensors projector file" in err and why in err, err
    assert "allow_pickle" not in err


def test_a_good_npz_projector_loads(tmp_path):
    from perank_jax.models.projector import build_projector
    try:                                   # projector files are read in weights/ (models/ before)
        from perank_jax.weights.projector import load_projector
    except ImportError:
        from perank_jax.models.projector import load_projector
    data = _npz_bytes(tmp_path)
    (tmp_path / "ok.npz").write_bytes(data)
    got = load_projector(tmp_path / "ok.npz", "mlp2x_gelu", 16, 32)
    want = build_projector("mlp2x_gelu", 16, 32)
    np.testing.assert_array_equal(np.asarray(got.layers[1].kernel[...]), np.asarray(want.layers[1].kernel[...]))


def test_in_a_real_subprocess_a_bad_score_is_one_line_without_traceback(files):
    req = files / "req.jsonl"
    req.write_text(json.dumps(request("1", score="n/a")) + "\n")
    r = subprocess.run([sys.executable, "-m", "perank_jax.cli", "rerank", "--requests", str(req)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == (f"perank rerank: error: {req}:1: field candidates[1].score is 'n/a', "
                                "expected a finite number")
