"""The training metrics log (JSONL, trimmed exactly on resume) and its loss / learning-rate plot."""
from __future__ import annotations

import json
from pathlib import Path

from perank_jax.core.atomic import atomic_text, atomic_write
from perank_jax.core.config import ConfigError


class MetricsLog:
    """JSONL metrics (process 0). On resume, lines past the restored step are dropped first,
    and so is a torn last line (a process killed while appending)."""

    def __init__(self, path: Path, start_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        keep = []
        if path.exists() and start_step > 0:
            lines = path.read_text().splitlines()
            for i, ln in enumerate(lines):
                try:
                    rec = json.loads(ln)
                except json.JSONDecodeError:
                    if i == len(lines) - 1:
                        break
                    raise ConfigError(f"{path}: line {i + 1} is not JSON (a corrupt metrics log)") from None
                if rec.get("step", 0) <= start_step:
                    keep.append(ln)
        atomic_text(path, "".join(ln + "\n" for ln in keep))

    def write(self, rec: dict):
        if self.enabled:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            except OSError as e:                  # a full disk names the log it hit
                if e.filename is not None:
                    raise
                raise OSError(e.errno, e.strerror or str(e), str(self.path)) from None


def plot_metrics(log_path: Path, png_path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = [json.loads(ln) for ln in log_path.read_text().splitlines()]
    train = [r for r in recs if "loss" in r]
    if not train:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ev = [r for r in recs if "eval_loss" in r]
    if ev:
        a.plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o-", label="eval loss")
    a.set_xlabel("step"), a.set_ylabel("loss"), a.legend()
    b.plot([r["step"] for r in train], [r["lr"] for r in train])
    b.set_xlabel("step"), b.set_ylabel("learning rate")
    fig.tight_layout()
    atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=100), binary=True)
    plt.close(fig)
