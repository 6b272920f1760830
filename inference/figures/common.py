"""What the figures share: matplotlib on the Agg backend, tensors shown as images, PNG files
written whole (a temporary file moved into place)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def image(t: torch.Tensor):
    """A ``(C, H, W)`` tensor in [0, 1] as an array for ``imshow``: ``(H, W)`` for one channel, else ``(H, W, C)``."""
    t = t.detach().cpu().clamp(0, 1)
    return t[0].numpy() if t.shape[0] == 1 else t.permute(1, 2, 0).numpy()


def show(ax, t: torch.Tensor) -> None:
    """Draw image ``t`` on ``ax`` (grey for one channel) without ticks."""
    ax.imshow(image(t), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([]), ax.set_yticks([])


def save(fig, path: Path) -> Path:
    """Write ``fig`` to the PNG ``path`` and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path
