"""The run directory: its layout, and whether an ``--out`` already holds a run."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from inference.training.checkpoint import CKPT_DIR, list_checkpoints
from inference.training.files import remove_temporaries

CONFIG = "config.json"
LOG = "log.jsonl"
VAL_LOG = "val.jsonl"
LOSS_PNG = "loss.png"
METRICS_PNG = "metrics.png"
FIGURES = "figures"
RUN_MARKERS = (CONFIG, LOG, VAL_LOG, CKPT_DIR)


@dataclass
class RunDir:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    @property
    def val_path(self) -> Path:
        return self.path / VAL_LOG

    @property
    def ckpt_dir(self) -> Path:
        return self.path / CKPT_DIR

    @property
    def figures_dir(self) -> Path:
        return self.path / FIGURES

    def remove_temporaries(self) -> List[Path]:
        """Delete the temporary files of a run killed while writing its files or checkpoints."""
        return (remove_temporaries(self.path, (CONFIG, LOG, VAL_LOG, LOSS_PNG, METRICS_PNG))
                + remove_temporaries(self.ckpt_dir, ("step_",)))

    def holds_run(self) -> bool:
        """True when the directory has any file a run writes (config, logs, checkpoints)."""
        return self.path.is_dir() and any((self.path / m).exists() for m in RUN_MARKERS)

    def read_config(self) -> Optional[Dict[str, Any]]:
        """The run's ``config.json``, or None when absent or unreadable."""
        try:
            data = json.loads(self.config_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def describe(self) -> str:
        """``model 'econ', dataset 'x', 3 checkpoints (latest step 500)`` for error messages."""
        parts = []
        cfg = self.read_config()
        if cfg is not None:
            parts.append(f"model {cfg.get('model')!r}, dataset {cfg.get('dataset')!r}")
        ckpts = list_checkpoints(self.ckpt_dir)
        if ckpts:
            parts.append(f"{len(ckpts)} checkpoint{'s' if len(ckpts) > 1 else ''} (latest step {ckpts[-1][0]})")
        return ", ".join(parts) or "run files"
