"""Model presets: the architecture of a named model (configs/models/*.yaml) and random models of it.

A preset holds ONE decoder or ONE encoder shape, typed by the model's own config dataclass and read
by the strict config reader (`perank_jax.core.config_files.load_yaml`: unknown keys and bad types are errors
naming the file and key; `base:` includes work as in every config). Tools and benchmarks take their
shapes from here instead of restating them:

    cfg = decoder_preset("mistral-7b", layers=4)                 # a DecoderConfig
    model = random_decoder(cfg, jnp.bfloat16)                    # random weights made on the device

A decoder preset may carry its family's chat template (`chat_template`), so a synthetic tokenizer
standing in for an unavailable one renders prompts the way the real model would.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from perank_jax.core.config import ConfigError
from perank_jax.core.config_files import load_yaml
from perank_jax.models.decoder import DecoderConfig
from perank_jax.models.encoder import EncoderConfig

# configs/models/ of this source tree (presets are a development and benchmarking aid: a tool that
# runs from a checkout reads them; an installed package does not need them)
PRESETS_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"


class PresetError(ConfigError):
    """A preset that does not exist or does not describe exactly one model."""


@dataclass(frozen=True)
class ModelPreset:
    name: str                                  # the model it describes, as its publisher names it
    decoder: DecoderConfig | None = None
    encoder: EncoderConfig | None = None
    chat_template: str | None = None           # decoders: the family's chat template (Jinja)
    notes: str = ""

    def __post_init__(self):
        if (self.decoder is None) == (self.encoder is None):
            raise PresetError(f"{self.name}: a preset describes exactly one model: give `decoder` or `encoder`")
        if self.chat_template is not None and self.decoder is None:
            raise PresetError(f"{self.name}: chat_template belongs to a decoder preset")


def preset_names(root: Path = PRESETS_DIR) -> list[str]:
    """The preset names under `root` (file names without .yaml)."""
    return sorted(p.stem for p in Path(root).glob("*.yaml"))


def load_preset(name: str, root: Path = PRESETS_DIR) -> ModelPreset:
    """Preset `name` (a name under `root`, or a path to a .yaml file); one PresetError naming the
    known presets if there is no such file."""
    path = Path(name) if str(name).endswith((".yaml", ".yml")) else Path(root) / f"{name}.yaml"
    if not path.is_file():
        raise PresetError(f"{name}: no such model preset (known: {', '.join(preset_names(root)) or 'none'}; "
                          f"looked for {path})")
    return load_yaml(ModelPreset, path)        # an error names the file (config.from_dict)


def decoder_preset(name: str, layers: int | None = None, root: Path = PRESETS_DIR) -> DecoderConfig:
    """The DecoderConfig of decoder preset `name`, with `layers` layers if given (short benchmark models)."""
    preset = load_preset(name, root)
    if preset.decoder is None:
        raise PresetError(f"{name}: is an encoder preset, a decoder was asked for")
    if layers is None:
        return preset.decoder
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise PresetError(f"{name}: layers must be an integer >= 1, got {layers!r}")
    return dataclasses.replace(preset.decoder, num_layers=layers)


def encoder_preset(name: str, root: Path = PRESETS_DIR) -> EncoderConfig:
    """The EncoderConfig of encoder preset `name`."""
    preset = load_preset(name, root)
    if preset.encoder is None:
        raise PresetError(f"{name}: is a decoder preset, an encoder was asked for")
    return preset.encoder


def random_decoder(cfg: DecoderConfig, dtype, seed: int = 0, std: float = 0.02, unroll: bool = False):
    """A Decoder of shape `cfg` with N(0, std) weights (norm scales included) in `dtype`, drawn by one
    jitted program on the default device: the host never holds the weights (a 7B model fits where
    only the device has room). For speed and memory measurements; the values mean nothing."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from perank_jax.models.decoder import Decoder
    dt = jnp.dtype(dtype)
    graphdef, abstract = nnx.split(nnx.eval_shape(
        lambda: Decoder(cfg, rngs=nnx.Rngs(0), dtype=dt, param_dtype=dt, unroll=unroll)))

    @jax.jit
    def init(key):
        leaves, treedef = jax.tree.flatten(abstract)
        keys = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(treedef, [(std * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
                                            for k, x in zip(keys, leaves)])
    return nnx.merge(graphdef, init(jax.random.key(seed)))
