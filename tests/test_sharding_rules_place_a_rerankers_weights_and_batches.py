"""Inference takes the logical-axis rules as training does (`mesh.rules`): `PERanker.from_pretrained(rules=)`,
`perank rerank --sharding-rules` and `perank serve --sharding-rules` (ServeSettings.sharding_rules) move
weights and batch rows on the (2, 4) mesh and change no ranking; bad rules are one error in the
training config's words."""
from __future__ import annotations

import jax
import pytest
from jax.sharding import PartitionSpec as P

from fixtures import hash_ranker
from helpers_cli import one_line_error
from perank_jax.cli import main
from perank_jax.core.config import ConfigError
from perank_jax.core.sharding import RULES, current_rules, make_mesh
from perank_jax.serve.settings import ServeSettings

QUERIES = ["cats and dogs", "money in river banks", "fish"]
LISTS = [[f"passage {i} about {w}" for i, w in enumerate("cats dogs banks rivers fish loans trees".split()[:m])]
         for m in (7, 5, 6)]


def spec_of(ranker, leaf: str):
    """The PartitionSpec of the first decoder weight whose path ends with `leaf`."""
    for path, x in jax.tree_util.tree_flatten_with_path(ranker.decoder.state)[0]:
        if str(getattr(path[-2], "key", path[-2])) == leaf or str(getattr(path[-1], "key", "")) == leaf:
            return x.sharding.spec
    raise AssertionError(f"no decoder weight named {leaf}")


def test_rules_move_weights_and_batch_rows_and_change_no_ranking(tiny_perank_dir_32, monkeypatch):
    import perank_jax.inference.engine as engine_mod
    import perank_jax.inference.prefix as prefix_mod
    want = hash_ranker(tiny_perank_dir_32).rerank_batch(QUERIES, LISTS, window=4, stride=2)
    mesh = make_mesh((1, 2, 4))
    default = hash_ranker(tiny_perank_dir_32, mesh=mesh, batch_size=2)
    moved = hash_ranker(tiny_perank_dir_32, mesh=mesh, batch_size=2,
                        rules=[["embed", "tensor"], ["vocab", None], ["batch", None]])
    assert spec_of(default, "embedding") == P("tensor", "fsdp")
    assert spec_of(moved, "embedding") == P(None, "tensor")
    assert current_rules() == RULES                         # loading leaves the table as it was
    rows = []
    real = engine_mod.shard_rows

    def recording(arrays, m):
        rows.append(current_rules()["batch"])
        return real(arrays, m)
    monkeypatch.setattr(engine_mod, "shard_rows", recording)
    monkeypatch.setattr(prefix_mod, "shard_rows", recording)       # shared prefixes and what follows them
    assert default.rerank_batch(QUERIES, LISTS, window=4, stride=2) == want
    assert set(rows) == {("data", "fsdp")}
    rows.clear()
    assert moved.rerank_batch(QUERIES, LISTS, window=4, stride=2) == want
    assert set(rows) == {None}                              # the batch rows placed under the ranker's rules
    assert current_rules() == RULES


@pytest.mark.parametrize("rules,expect", [
    ("[[embd, tensor]]", "[0]: unknown logical axis 'embd'"),
    ("[[embed, gpu]]", "[0]: unknown mesh axis in 'gpu'"),
    ("[[mlp, null], [mlp, tensor]]", "[1]: logical axis 'mlp' is named twice"),
])
def test_bad_rules_are_refused_in_the_training_configs_words(tmp_path, capsys, rules, expect):
    args = ["rerank", "--requests", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "o.txt"),
            "--sharding-rules", rules]
    err = one_line_error(capsys, _exit_code(args), expect)
    assert "--sharding-rules" in err
    one_line_error(capsys, _exit_code(["serve", "--sharding-rules", rules]), expect)
    import yaml
    with pytest.raises(ConfigError, match=f"serve setting sharding_rules.*{expect[4:12]}"):
        ServeSettings(sharding_rules=yaml.safe_load(rules))


def test_a_rules_file_is_read_like_inline_rules(tmp_path, capsys):
    from perank_jax.cli.args import sharding_rules
    path = tmp_path / "rules.yaml"
    path.write_text("- [embed, tensor]\n- [vocab, null]\n")
    assert sharding_rules(str(path)) == sharding_rules("[[embed, tensor], [vocab, null]]") \
        == [["embed", "tensor"], ["vocab", None]]
    path.write_text("- [embed, tensor\n")
    one_line_error(capsys, _exit_code(["rerank", "--requests", "r", "--sharding-rules", str(path)]),
                   "--sharding-rules: not a YAML list")


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code
