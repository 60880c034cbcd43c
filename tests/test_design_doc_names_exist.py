"""docs/design.md cites only what exists: every backticked file or folder path, and every backticked
dotted name of ours (`core.sharding.RULES`, `perank_jax.models`, `PERanker.from_pretrained`), resolves."""
import importlib
import re
from pathlib import Path

import perank_jax

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
OURS = set(perank_jax.SUBPACKAGES) | set(perank_jax.__all__) | {"perank_jax"}
DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
PATH = re.compile(r"[\w.*/-]*(/|\.(py|md|yaml|json)$)[\w.*/-]*")


def resolve(dotted: str) -> bool:
    """`a.b.c` as perank_jax.a.b.c: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    if parts[0] == "perank_jax":
        parts = parts[1:]
    for cut in range(len(parts), -1, -1):
        name = ".".join(["perank_jax", *parts[:cut]])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and not name.startswith(e.name) and e.name != name:
                raise                              # a real missing dependency, not a wrong path
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def path_exists(text: str) -> bool:
    return any(any(base.glob(text.rstrip("/"))) if "*" in text else (base / text).exists()
               for base in (ROOT, ROOT / "perank_jax"))


def missing_citations(markdown: str) -> tuple[list[str], int]:
    """The backticked paths and dotted names of ours in `markdown` that do not exist, and how many
    citations were checked."""
    missing, checked = [], 0
    for span in re.findall(r"`([^`\n]+)`", markdown):
        span = span.removesuffix("()")
        if PATH.fullmatch(span):
            checked += 1
            if not path_exists(span):
                missing.append(span)
        elif span in OURS or (DOTTED.fullmatch(span) and span.split(".")[0] in OURS):
            checked += 1
            if not resolve(span):
                missing.append(span)
    return missing, checked


def test_every_cited_path_and_name_in_design_md_exists():
    missing, checked = missing_citations(DESIGN.read_text())
    assert checked > 60
    assert missing == [], missing


def test_the_check_sees_a_missing_name_module_and_path():
    text = ("`core.sharding.RULES` `core.sharding.NO_SUCH_RULES` `inference.no_such_module` "
            "`inference/no_such.py` `models/perank.py` `configs/models/*.yaml` `configs/nothing/*.yaml` "
            "`PERanker.from_pretrained` `PERanker.no_such_method` `lax.scan` `perank rerank` `PERanker`")
    missing, checked = missing_citations(text)
    assert missing == ["core.sharding.NO_SUCH_RULES", "inference.no_such_module", "inference/no_such.py",
                       "configs/nothing/*.yaml", "PERanker.no_such_method"]
    assert checked == 10
