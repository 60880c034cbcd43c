"""Layer 0, the foundations every other layer stands on: each rule here is defined once.

    constants    the masking value, decode modes, prefix-sharing policies, ListMLE weightings, dtype names
    buckets      every shape bucket and TraceCounter (how code and tests count compilations)
    sharding     the mesh and THE logical-axis rules table (a config may override entries: axis_rules)
    config       strict typed configs: `setting` fields and THE checker (Field, ConfigError)
    config_files config files read boundedly: JSON, strict YAML, `base:` includes, overrides, load_yaml
    atomic       every output written to a temp file and renamed
    outputs      where a command may write (inputs refused as outputs, claimed and locked directories)
    interrupts   Ctrl-C / SIGTERM latched so a run stops at a boundary with its outputs untouched
    processes    several processes over jax.distributed
"""
from perank_jax.core.atomic import atomic_json, atomic_text, atomic_write, fresh_temp, replace_dir
from perank_jax.core.buckets import TraceCounter, length_buckets, round_up, smallest_fitting
from perank_jax.core.config import (SEED, ConfigError, Field, check_number, check_settings, from_dict, setting,
                                    settings_rules)
from perank_jax.core.config_files import dump_yaml, load_yaml
from perank_jax.core.constants import (COMPUTE_DTYPES, DECODE_MODES, DTYPES, ENCODER_MAX_LENGTH, MASKED, SHARE_PREFIX,
                                       WEIGHTINGS)
from perank_jax.core.interrupts import Terminated, check_interrupt, latched_interrupts
from perank_jax.core.outputs import OutputError, check_outputs, claim_dir, commit_files, dir_lock
from perank_jax.core.processes import barrier, gather_flags, init_distributed, share
from perank_jax.core.sharding import (AXIS_RULES, MESH_AXES, RULES, axis_rules, check_axis_rules, current_rules,
                                      logical_to_spec, make_mesh, named_sharding, shard_rows)

__all__ = [
    "atomic_json", "atomic_text", "atomic_write", "fresh_temp", "replace_dir",
    "TraceCounter", "length_buckets", "round_up", "smallest_fitting",
    "ConfigError", "Field", "SEED", "check_number", "check_settings", "dump_yaml", "from_dict", "load_yaml", "setting",
    "settings_rules",
    "COMPUTE_DTYPES", "DECODE_MODES", "DTYPES", "ENCODER_MAX_LENGTH", "MASKED", "SHARE_PREFIX", "WEIGHTINGS",
    "Terminated", "check_interrupt", "latched_interrupts",
    "OutputError", "check_outputs", "claim_dir", "commit_files", "dir_lock",
    "barrier", "gather_flags", "init_distributed", "share",
    "AXIS_RULES", "MESH_AXES", "RULES", "axis_rules", "check_axis_rules", "current_rules", "logical_to_spec", "make_mesh", "named_sharding", "shard_rows",
]
