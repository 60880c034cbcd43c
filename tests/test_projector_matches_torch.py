"""The projector equals torch's nn.Sequential(Linear, GELU, Linear) on the same weights,
loads both key layouts, refuses pickle unless allowed, and names every key problem."""
import numpy as np
import pytest
import torch
from flax import nnx

from perank_jax.models.projector import build_projector, legacy_kind, project
from perank_jax.weights.projector import load_projector
from perank_jax.weights.io import WeightError, save_safetensors_atomic


def _torch_projector(kind, e, d, seed=0):
    torch.manual_seed(seed)
    n = 1 if kind == "linear" else legacy_kind(kind)[1]["depth"]
    if n == 1:
        return torch.nn.Linear(e, d)
    layers = []
    for i in range(n):
        if i:
            layers.append(torch.nn.GELU())
        layers.append(torch.nn.Linear(e if i == 0 else d, d))
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("kind,prefix", [("mlp2x_gelu", "model.projector."), ("mlp3x_gelu", "projector."),
                                         ("linear", "model.projector.")])
def test_projector_equals_torch_sequential(tmp_path, kind, prefix):
    e, d = 12, 20
    tp = _torch_projector(kind, e, d)
    sd = {prefix + k: v.detach().numpy() for k, v in tp.state_dict().items()}
    sd["model.layers.0.other"] = np.zeros(3, np.float32)  # unrelated keys are ignored
    save_safetensors_atomic(sd, tmp_path / "model.safetensors")
    proj = load_projector(tmp_path, kind, e, d)
    x = np.random.default_rng(0).normal(size=(3, 5, e)).astype(np.float32)
    want = tp(torch.from_numpy(x)).detach().numpy()
    g, s = nnx.split(proj)
    got = np.asarray(project(g, s, x.reshape(-1, e))).reshape(want.shape)     # [N, k=1, d] -> x's shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # export round-trips to the same torch layout
    exported = proj.export_torch(prefix)
    for k, v in exported.items():
        np.testing.assert_array_equal(v, sd[k])


def test_identity_projector_has_no_weights_and_returns_input():
    proj = build_projector("identity", 8, 8)
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    g, s = nnx.split(proj)
    np.testing.assert_array_equal(np.asarray(project(g, s, x))[:, 0], x)
    with pytest.raises(ValueError, match="identity"):
        build_projector("identity", 8, 9)


def test_unknown_projector_type_is_rejected():
    with pytest.raises(ValueError, match="unknown projector_type"):
        legacy_kind("mlp2x_relu")


def test_wrong_shapes_and_missing_keys_are_listed(tmp_path):
    tp = _torch_projector("mlp2x_gelu", 6, 10)
    sd = {"model.projector." + k: v.detach().numpy() for k, v in tp.state_dict().items()}
    del sd["model.projector.2.bias"]
    save_safetensors_atomic(sd, tmp_path / "model.safetensors")
    with pytest.raises(WeightError) as ei:
        load_projector(tmp_path, "mlp2x_gelu", 6, 12)
    msg = str(ei.value)
    assert "model.projector.2.bias" in msg and "wrong shape" in msg


def test_pickle_projector_needs_explicit_permission(tmp_path):
    tp = _torch_projector("mlp2x_gelu", 6, 10)
    path = tmp_path / "mm_projector.bin"
    torch.save({"model.projector." + k: v for k, v in tp.state_dict().items()}, path)
    with pytest.raises(WeightError, match="allow_pickle"):
        load_projector(path, "mlp2x_gelu", 6, 10)
    proj = load_projector(path, "mlp2x_gelu", 6, 10, allow_pickle=True)
    x = np.ones((1, 6), np.float32)
    np.testing.assert_allclose(np.asarray(proj(x))[:, 0], tp(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_projector_weights_carry_logical_axes():
    proj = build_projector("mlp2x_gelu", 6, 10)
    assert proj.layers[0].kernel.get_metadata()["axes"] == ("proj_in", "proj_hidden")
    assert proj.layers[1].kernel.get_metadata()["axes"] == ("proj_hidden", "embed")
    assert proj.layers[1].bias.get_metadata()["axes"] == ("embed",)
