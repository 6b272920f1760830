"""TensorBoard event files of a run: losses, validation numbers, figures and hyper-parameters, for
``tensorboard --logdir RUN`` (optional: ``pip install -e ".[tensorboard]"``; docs/tools.md).

The JSONL logs stay the run's record; this is a copy in TensorBoard's format, written with
PyTorch's ``SummaryWriter`` into ``<run>/tensorboard/``::

    tb = TensorBoardLog(run_dir, purge_step=resumed_step)
    tb.scalars(step, {"loss": 812.5, "logs": {"beta_g": 0.1}}, prefix="train")   # train/loss, train/logs/beta_g
    tb.images(step, [run_dir / "figures" / "recon.png"])                        # figures/recon
    tb.hparams(config, {"val/loss": None})                                       # the HPARAMS tab
    tb.close()
"""
from __future__ import annotations

import importlib.util
import numbers
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional

#: the folder of the event files inside a run directory
TENSORBOARD_DIR = "tensorboard"


def available() -> bool:
    """Whether the ``tensorboard`` package, which ``torch.utils.tensorboard`` needs, is importable."""
    return importlib.util.find_spec("tensorboard") is not None


def _tag(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else str(name)


def flatten(values: Mapping, prefix: str = "") -> Dict[str, float]:
    """``{tag: float}`` of the numbers in ``values``: nested dicts join their keys with ``/``, lists
    of numbers give one tag per index (``kl_g/0``, ``kl_g/1``, ...); bools count as 0/1; strings,
    None and other values are left out."""
    out: Dict[str, float] = {}
    for name, value in values.items():
        tag = _tag(prefix, name)
        if hasattr(value, "detach") and value.dim() == 0:  # a 0-d tensor
            value = value.item()
        if isinstance(value, Mapping):
            out.update(flatten(value, tag))
        elif isinstance(value, (list, tuple)):
            out.update(flatten({str(i): v for i, v in enumerate(value)}, tag))
        elif isinstance(value, numbers.Real):  # bools, ints, floats, numpy scalars
            out[tag] = float(value)
    return out


def _hparam_value(value):
    """A config value as TensorBoard's hparams take it: numbers, bools and strings as they are,
    anything else (None, lists) as its JSON-like text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class TensorBoardLog:
    """A run's event files in ``<run_dir>/tensorboard/`` (``log_dir``).

    :param purge_step: the step a resumed run continues from: events of the interrupted run at
        this step and later are hidden (they were not kept in the checkpoint's logs either).
    Raises ``ImportError`` naming the extra when ``tensorboard`` is not installed (:func:`available`).
    """

    def __init__(self, run_dir, purge_step: Optional[int] = None):
        if not available():
            raise ImportError('TensorBoard logging needs the tensorboard package: pip install -e ".[tensorboard]"')
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        self._closed = False

    def scalars(self, step: int, values: Mapping, prefix: str = "") -> List[str]:
        """One point at ``step`` per number in ``values`` (:func:`flatten`: nested dicts and lists
        of floats included), tagged ``prefix/name``; returns the tags written."""
        flat = flatten(values, prefix)
        for tag, value in flat.items():
            self.writer.add_scalar(tag, value, global_step=step)
        return list(flat)

    def images(self, step: int, paths: Iterable, prefix: str = "figures") -> List[str]:
        """The image files ``paths`` (PNG figures) as image summaries at ``step``, tagged
        ``prefix/<file stem>``; returns the tags written. A file that cannot be read is skipped
        with a warning (the figure itself is still on disk)."""
        import numpy as np
        from PIL import Image

        tags = []
        for path in map(Path, paths):
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
            except (OSError, ValueError) as e:
                warnings.warn(f"TensorBoard: could not read the image {path}: {e}", RuntimeWarning, stacklevel=2)
                continue
            tag = _tag(prefix, path.stem)
            self.writer.add_image(tag, pixels, global_step=step, dataformats="HWC")
            tags.append(tag)
        return tags

    def hparams(self, config: Mapping, metrics: Mapping[str, Optional[float]], step: Optional[int] = None) -> None:
        """The run's hyper-parameters (``config``: numbers, bools and strings as they are, other
        values as text) for TensorBoard's HPARAMS tab, and the metrics it shows with them.

        ``metrics`` maps scalar tags to values: a number is written at ``step`` (default 0), None
        only names the tag, so the tab shows the curve that :meth:`scalars` writes under it
        (e.g. ``{"val/loss": None}`` at the start of a run).
        """
        from torch.utils.tensorboard.summary import hparams

        hparam_dict = {str(k): _hparam_value(v) for k, v in config.items()}
        experiment, session_start, session_end = hparams(hparam_dict, {k: 0.0 for k in metrics})
        file_writer = self.writer._get_file_writer()  # the run's own event file (add_hparams would open a sub-run)
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)
        for tag, value in metrics.items():
            if value is not None:
                self.writer.add_scalar(tag, float(value), global_step=0 if step is None else step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (a second call does nothing)."""
        if not self._closed:
            self.writer.close()
            self._closed = True

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
