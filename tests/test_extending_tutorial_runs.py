"""docs/extending.md runs as written: its projector block is examples/gated_projector.py, and its
runnable blocks (toy set, stage 1 and stage 2 training, `perank tables`, `from_pretrained` and rank)
executed in order in a fresh directory train the example projector, export a checkpoint whose config
names it, evaluate it and rank with it."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "extending.md"
BLOCK = re.compile(r"<!-- tutorial:(run|file (\S+)) -->\s*```(\w+)\n(.*?)```", re.S)
PROJECTOR = "examples.gated_projector:GatedProjector"


def tutorial_blocks():
    """[(kind, file or None, language, code)] of the marked blocks of docs/extending.md, in order."""
    return [("file" if f else "run", f or None, lang, code) for kind, f, lang, code in BLOCK.findall(DOC.read_text())]


def as_script(blocks) -> str:
    """One bash script: bash blocks as they are, python blocks fed to `python -` (exports carry over)."""
    parts = ["set -euo pipefail"]
    for _, _, lang, code in blocks:
        assert lang in ("bash", "python"), f"a runnable block must be bash or python, got {lang!r}"
        parts.append(code if lang == "bash" else f"python - <<'PYTHON_BLOCK'\n{code}PYTHON_BLOCK")
    return "\n".join(parts) + "\n"


def test_the_tutorials_projector_block_is_the_example_module():
    files = [(f, code) for kind, f, _, code in tutorial_blocks() if kind == "file"]
    assert [f for f, _ in files] == ["examples/gated_projector.py"]
    assert files[0][1] == (ROOT / files[0][0]).read_text()
    assert PROJECTOR in DOC.read_text()


def test_the_tutorials_example_error_is_the_one_the_checker_prints():
    from perank_jax.models.projector import check_projector
    with pytest.raises(ValueError) as e:
        check_projector(PROJECTOR, {"gate_bias": 20}, "model.projector_options")
    said = str(e.value).replace(f"'{PROJECTOR}'", "'...'")
    assert f"`{said}`" in " ".join(DOC.read_text().split()), said


@pytest.mark.slow
def test_the_tutorial_trains_evaluates_and_ranks_with_the_example_projector(tmp_path):
    blocks = tutorial_blocks()
    runs = [b for b in blocks if b[0] == "run"]
    assert [lang for *_, lang, _ in runs][-1] == "python" and len(runs) >= 5
    for _, f, _, code in blocks:                    # the files the tutorial has the reader write
        if f:
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / f).write_text(code)
    for name in ("configs", "tools"):               # the clone the tutorial runs in
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "examples" / "__init__.py").write_text((ROOT / "examples" / "__init__.py").read_text())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    start = time.perf_counter()
    out = subprocess.run(["bash", "-c", as_script(runs)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    print(f"tutorial ran in {time.perf_counter() - start:.1f} s")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    conf = json.loads((tmp_path / "runs/gated-stage2/export/config.json").read_text())
    assert conf["projector"] == PROJECTOR and conf["projector_options"] == {"gate_bias": 1.0}
    stage1 = json.loads((tmp_path / "runs/gated-stage1/export/projector_config.json").read_text())
    assert stage1["projector"] == PROJECTOR
    table = (tmp_path / "runs/gated-tables/tables.md").read_text()
    assert re.search(r"^\| gated \| \d\.\d{4} \|", table, re.M), table
    ranking = re.search(r"^ranking: (\[.*\])$", out.stdout, re.M)
    assert ranking, out.stdout[-2000:]
    assert sorted(json.loads(ranking.group(1))) == [0, 1, 2]
    assert f"projector: {PROJECTOR} GatedOptions(gate_bias=1.0)" in out.stdout
