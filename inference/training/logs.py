"""``log.jsonl`` / ``val.jsonl`` (one JSON object per line) and the loss-curve figure ``loss.png``."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

from inference.training.files import atomic_write, atomic_write_text


def _clean(value):
    """JSON has no NaN/inf: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


class JsonlLog:
    """Append-only JSON-lines file, flushed after every record."""

    def __init__(self, path):
        self.path = Path(path)

    def write(self, record: Dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(_clean(record)) + "\n")
            f.flush()

    def read(self) -> List[Dict]:
        return read_jsonl(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step`` > ``step`` (written after the checkpoint a run resumes from)."""
        if not self.path.exists():
            return
        records = self.read()
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) != len(records):
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def read_jsonl(path) -> List[Dict]:
    """Records of a JSON-lines file; a torn last line (crash mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _floats(records, key):
    xs, ys = [], []
    for r in records:
        try:
            y = float(r[key])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(y):
            xs.append(r["step"])
            ys.append(y)
    return xs, ys


def plot_losses(run_dir, out_name: str = "loss.png") -> Path | None:
    """Draw training (and validation) loss against step from the run's logs; None if nothing to draw."""
    run_dir = Path(run_dir)
    train = _floats(read_jsonl(run_dir / "log.jsonl"), "loss")
    val = _floats(read_jsonl(run_dir / "val.jsonl"), "val_loss")
    if not train[0] and not val[0]:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    if train[0]:
        ax.plot(*train, label="train loss", lw=1)
    if val[0]:
        ax.plot(*val, "o-", label="validation loss", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per image)")
    ys = train[1] + val[1]
    if min(ys) > 0 and max(ys) / min(ys) > 100:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.96)
    return atomic_write(run_dir / out_name, lambda f: fig.savefig(f, format="png"))


def plot_metrics(run_dir, out_name: str = "metrics.png") -> Path | None:
    """One panel per learning metric in ``val.jsonl`` (``"metrics"``) against step; a list-valued
    metric (e.g. each expert's share of wins) draws one line per entry. None if nothing to draw."""
    run_dir = Path(run_dir)
    records = [r for r in read_jsonl(run_dir / "val.jsonl") if isinstance(r.get("metrics"), dict)]
    names = []
    for r in records:
        names += [k for k, v in r["metrics"].items() if k not in names and isinstance(v, (int, float, list))]
    if not names:
        return None
    from matplotlib.figure import Figure

    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.5 * rows), dpi=100)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        points = [(r["step"], r["metrics"][name]) for r in records if name in r["metrics"]]
        if isinstance(points[-1][1], list):
            width = max(len(v) for _, v in points if isinstance(v, list))
            for j in range(width):
                xy = [(s, v[j]) for s, v in points if isinstance(v, list) and j < len(v) and v[j] is not None]
                ax.plot([s for s, _ in xy], [v for _, v in xy], "o-", ms=2, lw=1, label=str(j))
            ax.legend(fontsize=6, ncol=2)
        else:
            xy = [(s, v) for s, v in points if isinstance(v, (int, float)) and math.isfinite(v)]
            ax.plot([s for s, _ in xy], [v for _, v in xy], "o-", ms=2, lw=1)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic_write(run_dir / out_name, lambda f: fig.savefig(f, format="png"))
