"""No file a user reads or runs (README, docs, the package and its model card, configs, tools)
points at the development machine's data folder (`../shared/data`): users get the data with
`perank data fetch --out data/raw`. Tests may still read that folder where it exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRIVATE = re.compile(r"\.\./shared|shared/data|[\"']shared[\"']\s*/\s*[\"']data[\"']")


def private_references(root: Path) -> list[str]:
    files = [root / "README.md", root / "pyproject.toml"]
    for d in ("docs", "perank_jax", "configs", "tools"):
        files += sorted(p for p in (root / d).rglob("*") if p.is_file())
    hits = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue                                  # weights, images
        hits += [f"{f.relative_to(root)}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1)
                 if PRIVATE.search(line)]
    return hits


def test_no_user_facing_file_refers_to_the_development_machines_data_folder():
    assert private_references(ROOT) == []


def test_the_check_finds_each_form_of_the_private_path(tmp_path):
    for d in ("docs", "perank_jax", "configs", "tools"):
        (tmp_path / d).mkdir()
    (tmp_path / "README.md").write_text("see ../shared/data\n")
    (tmp_path / "configs" / "t.yaml").write_text("queries: data/raw/q.tsv\n")
    (tmp_path / "tools" / "b.py").write_text('DATA = ROOT.parent / "shared" / "data" / "x"\n')
    (tmp_path / "perank_jax" / "w.bin").write_bytes(b"\xff\xfe../shared")
    assert [h.split(":")[0] for h in private_references(tmp_path)] == ["README.md", "tools/b.py"]
