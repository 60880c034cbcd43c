"""YAML configs include other files with `base:` (relative to the including file, the including
mapping's keys winning); a missing file, a cycle or too deep a chain is one error naming the file."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers_cli import one_line_error
from perank_jax.core.config import ConfigError
from perank_jax.core.config_files import MAX_INCLUDE_DEPTH, MAX_INCLUDES, load_mapping, load_yaml
from perank_jax.evaluate.datasets import DatasetSpec
from perank_jax.evaluate.tables import load_config

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_an_included_mapping_is_merged_under_the_including_keys(tmp_path):
    write(tmp_path / "parts" / "base.yaml", "a: 1\nnested: {x: 1, y: 2}\nlist: [1, 2]\n")
    top = write(tmp_path / "top.yaml", "base: parts/base.yaml\nnested: {y: 3}\nlist: [9]\nb: 2\n")
    assert load_mapping(top) == {"a": 1, "b": 2, "nested": {"x": 1, "y": 3}, "list": [9]}


def test_includes_resolve_relative_to_each_including_file_not_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path / "a" / "b" / "leaf.yaml", "leaf: true\n")
    write(tmp_path / "a" / "mid.yaml", "base: b/leaf.yaml\nmid: true\n")
    top = write(tmp_path / "top.yaml", "base: a/mid.yaml\n")
    monkeypatch.chdir(tmp_path / "a" / "b")
    assert load_mapping(top) == {"leaf": True, "mid": True}


def test_a_list_of_bases_merges_in_order_and_entries_of_lists_may_include(tmp_path):
    write(tmp_path / "one.yaml", "k: 1\nonly_one: 1\n")
    write(tmp_path / "two.yaml", "k: 2\n")
    top = write(tmp_path / "top.yaml", "base: [one.yaml, two.yaml]\nitems:\n  - {base: one.yaml, k: 5}\n  - 7\n")
    assert load_mapping(top) == {"k": 2, "only_one": 1, "items": [{"k": 5, "only_one": 1}, 7]}


def test_a_tables_config_takes_its_dataset_paths_from_an_included_dataset_file(tmp_path):
    write(tmp_path / "datasets" / "d.yaml", "name: d\nqueries: q.tsv\nrun: r.txt\ncorpus: c.tsv\nqrels: qr.txt\n")
    cfg = write(tmp_path / "t.yaml", "datasets:\n  - {base: datasets/d.yaml, name: d-half, max_queries: 2}\n"
                                     "methods:\n  - {name: BM25, kind: first_stage}\n")
    (d,) = load_config(cfg).datasets
    assert (d.name, d.queries, d.qrels, d.max_queries) == ("d-half", "q.tsv", "qr.txt", 2)


@pytest.mark.parametrize("case", ["missing", "self", "cycle", "not_a_mapping", "bad_value", "directory"])
def test_a_broken_include_is_one_config_error_naming_the_file(tmp_path, case):
    top = tmp_path / "top.yaml"
    if case == "missing":
        write(top, "base: nowhere.yaml\n")
        expect = [str(top), "nowhere.yaml", "not found"]
    elif case == "self":
        write(top, "base: top.yaml\n")
        expect = [str(top), "includes itself"]
    elif case == "cycle":
        write(top, "base: b.yaml\n")
        write(tmp_path / "b.yaml", "x: 1\nsub: {base: top.yaml}\n")
        expect = [str(tmp_path / "b.yaml"), "cycle", str(top)]
    elif case == "not_a_mapping":
        write(top, "base: list.yaml\n")
        write(tmp_path / "list.yaml", "- 1\n- 2\n")
        expect = [str(tmp_path / "list.yaml"), "must be a mapping", str(top)]
    elif case == "bad_value":
        write(top, "base: {a: 1}\n")
        expect = [str(top), "base must be a file name"]
    else:
        (tmp_path / "dir.yaml").mkdir()
        write(top, "base: dir.yaml\n")
        expect = [str(top), "not a file"]
    with pytest.raises(ConfigError) as e:
        load_mapping(top)
    msg = str(e.value)
    assert "\n" not in msg and all(s in msg for s in expect), msg


def test_an_include_chain_deeper_than_the_limit_is_refused(tmp_path):
    n = MAX_INCLUDE_DEPTH + 2
    for i in range(n):
        write(tmp_path / f"f{i}.yaml", f"base: f{i + 1}.yaml\nk{i}: {i}\n" if i < n - 1 else "end: 1\n")
    assert load_mapping(tmp_path / f"f{n - MAX_INCLUDE_DEPTH}.yaml")["end"] == 1     # MAX_INCLUDE_DEPTH files
    with pytest.raises(ConfigError, match="deeper than"):                                # one more
        load_mapping(tmp_path / f"f{n - MAX_INCLUDE_DEPTH - 1}.yaml")


def test_a_fan_out_of_includes_is_refused_before_it_grows(tmp_path):
    """Each file includes the next one 4 times: 4**7 reads unless the total is capped."""
    for i in range(7):
        write(tmp_path / f"g{i}.yaml", f"base: [g{i + 1}.yaml, g{i + 1}.yaml, g{i + 1}.yaml, g{i + 1}.yaml]\n")
    write(tmp_path / "g7.yaml", "end: 1\n")
    with pytest.raises(ConfigError, match=f"past the {MAX_INCLUDES} includes"):
        load_mapping(tmp_path / "g0.yaml")
    assert load_mapping(tmp_path / "g5.yaml") == {"end": 1}          # 4 + 16 includes: within the cap


def test_overrides_apply_after_includes(tmp_path):
    write(tmp_path / "d.yaml", "name: d\nqrels: a.txt\n")
    top = write(tmp_path / "top.yaml", "base: d.yaml\n")
    assert load_yaml(DatasetSpec, top, ["qrels=b.txt"]).qrels == "b.txt"


def test_the_cli_reports_a_missing_include_as_one_line(tmp_path, capsys):
    from perank_jax.cli import main
    top = write(tmp_path / "tables.yaml", "base: gone.yaml\nmethods: []\n")
    one_line_error(capsys, main(["tables", str(top)]), "gone.yaml: included file not found")


def test_each_shipped_dataset_block_lives_in_one_file():
    """The DL20 / SciFact / NFCorpus paths are written once, in configs/datasets/, and included."""
    texts = {p: p.read_text() for p in (ROOT / "configs").rglob("*.yaml")}
    for path in ("data/raw/dl20/qrels.txt", "data/raw/scifact/qrels.test.txt", "data/raw/scifact/qrels.train.txt",
                 "data/raw/nfcorpus/qrels.test.txt"):
        owners = [p for p, t in texts.items() if path in t]
        assert len(owners) == 1 and owners[0].parent.name == "datasets", (path, owners)


def test_no_tool_or_module_repeats_a_dl20_path():
    """The DL20 files' default paths are written in configs/datasets/ only: tools read them from there
    (tools/build_training_data.py reads the prepared layout under its own --data root)."""
    import re
    names = {Path(v).name for f in ("dl20.yaml", "dl20-candidates.yaml")
             for v in load_yaml(DatasetSpec, ROOT / "configs" / "datasets" / f).__dict__.values()
             if isinstance(v, str) and v.startswith("data/raw/dl20/")}
    assert names >= {"queries.tsv", "run.bm25.top100.txt", "docs.tsv", "qrels.txt", "bm25.top100.candidates.jsonl"}
    sep = r"""(/|["']\s*/\s*["'])"""                 # data/raw/dl20/x or "data" / "raw" / "dl20" / "x"
    pattern = re.compile(rf"raw{sep}dl20{sep}({'|'.join(map(re.escape, sorted(names)))})\b")
    files = [*ROOT.glob("tools/*.py"), *ROOT.glob("tools/*.sh"), *ROOT.glob("perank_jax/**/*.py"),
             *ROOT.glob("configs/**/*.yaml")]
    hits = sorted(f"{f.relative_to(ROOT)}:{i + 1}" for f in files
                  for i, line in enumerate(f.read_text().splitlines()) if pattern.search(line))
    assert hits == ["configs/datasets/dl20-candidates.yaml:6", "configs/datasets/dl20.yaml:5",
                    "configs/datasets/dl20.yaml:6", "configs/datasets/dl20.yaml:7", "configs/datasets/dl20.yaml:8"], hits
