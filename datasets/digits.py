"""Digit sources for the multi-digit scenes: real MNIST (IDX files) or synthetic digits.

Both sources expose ``num_classes = 10``, ``len()``, ``get(index) -> (28x28 float tensor in
[0, 1], label)``, the vectorised ``sample(labels, generator) -> (N, 28, 28)`` and
``select(labels, u)`` (deterministic: instance ``floor(u * count[label])`` of that label, used
by the scene generators so that scenes are reproducible per index).
Nothing is ever downloaded.

Splits never share a digit (:func:`default_digit_source`): with real MNIST, training scenes take
the first five sixths of MNIST's training file (50,000 digits), validation scenes its last sixth
(10,000) and test scenes the ``t10k`` file; with the synthetic source each split has its own
bank (seeds :data:`SYNTHETIC_SPLIT_SEEDS`).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._rng import ItemRNG
from .base import upsample_matrix
from .errors import DatasetError

log = logging.getLogger(__name__)

#: environment variable holding the MNIST folder (or images file) for :func:`default_digit_source`
MNIST_ENV = "PYRO_SCENES_MNIST"
DIGIT_SIZE = 28
#: the last 1/VAL_DIVISOR of MNIST's training file is kept for validation scenes
VAL_DIVISOR = 6
#: which IDX file and part of it each split draws its digits from
IDX_SPLITS = {"train": ("train", "train"), "val": ("train", "val"), "test": ("t10k", "all")}
#: seed of each split's synthetic digit bank; training keeps seed 0, the bank all splits used
#: before they had their own digits, so training scenes are unchanged
SYNTHETIC_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


class _DigitBank:
    """Common code: a uint8/float bank of 28x28 digits with labels and per-label index tables."""

    num_classes = 10

    def _init_bank(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images            # (N, 28, 28) uint8 or float in [0, 1]
        self.labels = labels.long()      # (N,)
        counts = torch.bincount(self.labels, minlength=10)
        if (counts == 0).any():
            missing = (counts == 0).nonzero().flatten().tolist()
            raise DatasetError(f"{self.describe()}: no images of digit(s) {missing}")
        self._order = torch.argsort(self.labels, stable=True)
        self._counts = counts
        self._starts = torch.cumsum(counts, 0) - counts
        self._float_cache: dict[int, torch.Tensor] = {}

    def describe(self) -> str:  # pragma: no cover - overridden
        return type(self).__name__

    def __len__(self) -> int:
        return self.labels.numel()

    def _as_float(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def get(self, index: int):
        """(28x28 float tensor in [0, 1], label int) of bank entry ``index``."""
        return self._as_float(self.images[index]), int(self.labels[index])

    def select_indices(self, labels: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Bank indices of the ``floor(u * count)``-th instance of each label (vectorised)."""
        labels = torch.as_tensor(labels).long()
        if labels.numel() and (labels.min() < 0 or labels.max() > 9):
            raise DatasetError(f"digit labels must be in 0..9, got {labels.unique().tolist()}")
        cnt = self._counts[labels]
        k = torch.minimum((torch.as_tensor(u, dtype=torch.float64) * cnt).long(), cnt - 1)
        return self._order[self._starts[labels] + k]

    def select(self, labels: torch.Tensor, u: torch.Tensor, size: int = DIGIT_SIZE) -> torch.Tensor:
        """Digits (..., size, size) float in [0, 1] for labels (...) and uniforms u (...)."""
        idx = self.select_indices(labels, u)
        return self.resized(size)[idx]

    def sample(self, labels: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Random instances of the given labels: (N, 28, 28) float in [0, 1]."""
        labels = torch.as_tensor(labels).long()
        u = torch.rand(labels.shape, generator=generator, dtype=torch.float64)
        return self.select(labels, u)

    def resized(self, size: int) -> torch.Tensor:
        """The whole bank as float (N, size, size), resized with antialiasing (cached)."""
        if size not in self._float_cache:
            x = self._as_float(self.images)
            if size != x.shape[-1]:
                x = F.interpolate(x[:, None], size=(size, size), mode="bilinear",
                                  antialias=True, align_corners=False)[:, 0].clamp_(0, 1)
            self._float_cache[size] = x.contiguous()
        return self._float_cache[size]


class ArrayDigits(_DigitBank):
    """Digits given as arrays: ``images`` (N, 28, 28) uint8 (or float in [0, 1]) and
    ``labels`` (N,) 0..9, e.g. the real MNIST sample that measures the S-Acc checkers
    (``python -m benchmarks.checker_shift``).  ``name`` and a hash of the arrays make its
    :meth:`config`."""

    def __init__(self, images, labels, name: str = "arrays") -> None:
        images = torch.as_tensor(np.asarray(images))
        if images.dim() != 3 or images.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE):
            raise DatasetError(f"digit images must be (N, 28, 28), got {tuple(images.shape)}")
        self.name = name
        self._init_bank(images, torch.as_tensor(np.asarray(labels)))
        digest = hashlib.sha256(self.images.numpy().tobytes() + self.labels.numpy().tobytes())
        self._digest = digest.hexdigest()[:16]

    def describe(self) -> str:
        return f"ArrayDigits({self.name}, {len(self)} digits)"

    def config(self) -> dict:
        return dict(source="arrays", name=self.name, count=len(self), sha256=self._digest)


# ---------------------------------------------------------------------------------------------
# IDX (real MNIST)

_IDX_NAMES = {
    "images": ["{kind}-images-idx3-ubyte", "{kind}-images.idx3-ubyte"],
    "labels": ["{kind}-labels-idx1-ubyte", "{kind}-labels.idx1-ubyte"],
}
_MAGIC = {"images": 2051, "labels": 2049}


def _find_idx_file(root: Path, what: str, kind: str) -> Path:
    dirs = [root, root / "MNIST" / "raw", root / "raw", root / "mnist"]
    tried = []
    for d in dirs:
        for pattern in _IDX_NAMES[what]:
            base = d / pattern.format(kind=kind)
            for p in (base, base.with_name(base.name + ".gz")):
                tried.append(p)
                if p.is_file():
                    return p
    raise DatasetError(
        f"MNIST {what} file not found under {root}: looked for "
        f"{_IDX_NAMES[what][0].format(kind=kind)}[.gz] in {root}, {root / 'MNIST' / 'raw'}, "
        f"{root / 'raw'} and {root / 'mnist'}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"{path}: cannot read (corrupt or truncated gzip?): {e}") from None


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped) holding unsigned bytes; returns a uint8 array.

    Raises :class:`DatasetError` naming the file for a missing file, a wrong magic number, an
    unsupported data type, or a payload shorter (truncated) or longer than the header says.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    magic = struct.unpack(">I", data[:4])[0]
    if expected_magic is not None and magic != expected_magic:
        raise DatasetError(f"{path}: wrong magic number {magic} (0x{magic:08x}), expected "
                           f"{expected_magic} (0x{expected_magic:08x})")
    zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise DatasetError(f"{path}: wrong magic number 0x{magic:08x}: not an unsigned-byte IDX "
                           "file")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(data) - header
    if got < expected:
        raise DatasetError(f"{path}: truncated payload: header says {dims} = {expected} bytes, "
                           f"file has {got}")
    if got > expected:
        raise DatasetError(f"{path}: {got - expected} unexpected trailing bytes after the "
                           f"{dims} payload")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


class IDXDigits(_DigitBank):
    """Real MNIST read from the standard IDX files.

    ``path`` is a folder holding ``{kind}-images-idx3-ubyte`` and ``{kind}-labels-idx1-ubyte``
    (each optionally ``.gz``; the ``MNIST/raw/`` layout torchvision writes and ``raw/`` are
    searched too), or the images file itself.  ``path=None`` reads the environment variable
    ``PYRO_SCENES_MNIST``.  ``kind`` is ``"train"`` (60,000 digits) or ``"t10k"`` (10,000);
    when ``path`` is an images file, ``kind="t10k"`` reads the file whose name has ``t10k`` in
    place of ``train``.  ``part`` keeps ``"all"`` the digits, the first five sixths
    (``"train"``) or the last sixth (``"val"``, :data:`VAL_DIVISOR`), so that training and
    validation scenes never share a digit.  Images of another size than 28x28 are resized to
    28x28.
    """

    def __init__(self, path: str | os.PathLike | None = None, kind: str = "train",
                 part: str = "all") -> None:
        if part not in ("all", "train", "val"):
            raise DatasetError(f"part must be 'all', 'train' or 'val', got {part!r}")
        if path is None:
            path = os.environ.get(MNIST_ENV)
            if not path:
                raise DatasetError(f"no MNIST path given and ${MNIST_ENV} is not set")
        root = Path(path).expanduser()
        if root.is_file() and kind == "t10k" and "train" in root.name:
            root = root.with_name(root.name.replace("train", "t10k"))
            if not root.is_file():
                raise DatasetError(f"MNIST test images {root} not found (test scenes use the "
                                   "t10k digits, never the training ones)")
        if root.is_file():
            images_path = root
            name = root.name.replace("images", "labels").replace("idx3", "idx1")
            labels_path = root.with_name(name)
            if labels_path == images_path or not labels_path.is_file():
                raise DatasetError(f"{root}: labels file {labels_path.name} not found next to it")
        elif root.is_dir():
            images_path = _find_idx_file(root, "images", kind)
            labels_path = _find_idx_file(root, "labels", kind)
        else:
            raise DatasetError(f"MNIST path {root} does not exist")
        images = read_idx(images_path, _MAGIC["images"])
        labels = read_idx(labels_path, _MAGIC["labels"])
        if images.ndim != 3:
            raise DatasetError(f"{images_path}: expected 3 dimensions (N, rows, cols), got "
                               f"{images.shape}")
        if labels.ndim != 1:
            raise DatasetError(f"{labels_path}: expected 1 dimension (N,), got {labels.shape}")
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(f"{images_path} has {images.shape[0]} images but {labels_path} "
                               f"has {labels.shape[0]} labels")
        if labels.size and labels.max() > 9:
            raise DatasetError(f"{labels_path}: labels must be 0..9, found {int(labels.max())}")
        self.images_path, self.labels_path = images_path, labels_path
        self.kind, self.part = kind, part
        n_val = images.shape[0] // VAL_DIVISOR
        keep = {"all": slice(None), "train": slice(0, images.shape[0] - n_val),
                "val": slice(images.shape[0] - n_val, None)}[part]
        images, labels = images[keep], labels[keep]
        imgs = torch.from_numpy(images.copy())
        if imgs.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE):
            imgs = (F.interpolate(imgs[:, None].float(), size=(DIGIT_SIZE, DIGIT_SIZE),
                                  mode="bilinear", antialias=True)[:, 0]).round().clamp(0, 255)
            imgs = imgs.to(torch.uint8)
        self._init_bank(imgs, torch.from_numpy(labels.astype(np.int64)))

    def describe(self) -> str:
        return f"IDXDigits({getattr(self, 'images_path', '?')})"

    def config(self) -> dict:
        st = self.images_path.stat()
        return dict(source="idx", images=str(self.images_path.resolve()), size=st.st_size,
                    count=len(self), part=self.part)


# ---------------------------------------------------------------------------------------------
# synthetic digits

_FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
               "DejaVuSans-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf",
               "cmss10.ttf", "cmr10.ttf",
               "STIXGeneral.ttf", "STIXGeneralItalic.ttf")
#: fonts of the style "other-fonts", used by no other style: a style no checker is trained on
_OTHER_FONT_FILES = ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
                     "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif-Bold.ttf",
                     "DejaVuSerif-BoldItalic.ttf", "STIXGeneralBol.ttf", "STIXGeneralBolIta.ttf",
                     "cmb10.ttf", "cmtt10.ttf")
#: styles of :class:`SyntheticDigits`
STYLES = ("fonts", "strokes", "fonts+strokes", "other-fonts")
_T = 56  # template resolution (2x MNIST)


def _place_glyph(im, fit: bool = False) -> torch.Tensor:
    """A white-on-black PIL glyph image as a (56, 56) template: scaled to 40 px tall (MNIST's
    20 px at 2x), at most 44 px wide (``fit``: a glyph wider than tall 40 px wide instead, as
    MNIST fits each digit into a 20x20 box), centred by centre of mass as MNIST does."""
    from PIL import Image

    glyph = im.crop(im.getbbox())
    w, h = glyph.size
    scale = 40.0 / h
    nw, nh = max(4, min(44, round(w * scale))), 40
    if fit and w > h:
        nw, nh = 40, max(4, round(h * 40.0 / w))
    glyph = glyph.resize((nw, nh), Image.LANCZOS)
    g = torch.from_numpy(np.asarray(glyph, dtype=np.float32) / 255.0)
    ys, xs = torch.meshgrid(torch.arange(float(nh)), torch.arange(float(nw)), indexing="ij")
    m = g.sum().clamp_min(1e-6)
    cy, cx = float((g * ys).sum() / m), float((g * xs).sum() / m)
    top = min(max(int(round(_T / 2 - cy - 0.5)), 0), _T - nh)
    left = min(max(int(round(_T / 2 - cx - 0.5)), 0), _T - nw)
    out = torch.zeros(_T, _T)
    out[top:top + nh, left:left + nw] = g
    return out


@functools.lru_cache(maxsize=2)
def _glyph_templates(files: tuple[str, ...] = _FONT_FILES) -> tuple[torch.Tensor, tuple[str, ...]]:
    """(F, 10, 56, 56) float glyph templates of the digits of the matplotlib fonts ``files``
    (:func:`_place_glyph`) and the names of the fonts found."""
    from PIL import Image, ImageDraw, ImageFont

    fonts = []
    try:
        import matplotlib
        ttf_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        fonts = [(n, ttf_dir / n) for n in files if (ttf_dir / n).is_file()]
    except Exception:  # pragma: no cover - matplotlib is a dependency
        pass
    loaded = []
    for name, p in fonts:
        try:
            loaded.append((name, ImageFont.truetype(str(p), 96)))
        except OSError:  # pragma: no cover
            continue
    if not loaded:  # pragma: no cover - PIL's bundled font as a last resort
        loaded = [("pil-default", ImageFont.load_default(size=96))]
    out = torch.zeros(len(loaded), 10, _T, _T)
    for fi, (_, font) in enumerate(loaded):
        for d in range(10):
            im = Image.new("L", (160, 160), 0)
            ImageDraw.Draw(im).text((30, 10), str(d), fill=255, font=font)
            out[fi, d] = _place_glyph(im)
    return out, tuple(n for n, _ in loaded)


def _c(x: float, y: float) -> tuple:
    """A corner: the stroke passes through (x, y) with a kink (a repeated spline point)."""
    return (x, y), (x, y)


def _oval() -> list:
    a = np.radians(np.arange(-90, 300, 30))
    return [list(zip(0.5 + 0.48 * np.cos(a), 0.5 + 0.5 * np.sin(a)))]


#: pen-stroke skeletons of the digits, a few variants each, as MNIST writers draw them: strokes
#: of (x, y) spline points in a unit box, y down (x is scaled by the writer's aspect ratio)
_SKELETONS = {
    0: [_oval(),
        [[(0.62, 0.02), (0.25, 0.12), (0.04, 0.55), (0.3, 0.98), (0.75, 0.9), (0.96, 0.45),
          (0.8, 0.08), (0.5, 0.0)]]],
    1: [[[(0.5, 0.0), (0.5, 1.0)]],
        [[(0.6, 0.0), (0.5, 0.5), (0.42, 1.0)]],
        [[(0.2, 0.25), *_c(0.55, 0.0), (0.55, 1.0)]]],
    2: [[[(0.1, 0.28), (0.3, 0.04), (0.62, 0.0), (0.86, 0.2), (0.78, 0.46), (0.42, 0.76),
          *_c(0.06, 1.0), (0.95, 0.97)]],
        [[(0.1, 0.28), (0.3, 0.04), (0.62, 0.0), (0.86, 0.2), (0.78, 0.46), (0.42, 0.74),
          (0.1, 0.97), (0.12, 0.78), (0.42, 0.84), (0.7, 1.0), (0.95, 0.93)]],
        [[(0.08, 0.2), (0.4, 0.0), (0.8, 0.1), (0.75, 0.42), (0.4, 0.7), (0.08, 0.95),
          (0.05, 0.65), (0.35, 0.7), (0.65, 0.95), (0.95, 0.95)]],
        [[(0.05, 0.2), (0.4, 0.0), (0.85, 0.12), (0.7, 0.5), (0.3, 0.85), *_c(0.08, 1.0),
          (0.5, 0.92), (0.98, 1.0)]]],
    3: [[[(0.1, 0.12), (0.45, 0.0), (0.82, 0.12), (0.78, 0.36), *_c(0.4, 0.48), (0.84, 0.62),
          (0.88, 0.86), (0.5, 1.0), (0.08, 0.88)]],
        [[(0.08, 0.02), *_c(0.9, 0.02), *_c(0.42, 0.42), (0.84, 0.56), (0.9, 0.82), (0.5, 1.0),
          (0.1, 0.86)]]],
    4: [[[(0.62, 0.0), *_c(0.04, 0.68), (0.96, 0.68)], [(0.7, 0.0), (0.7, 1.0)]],
        [[(0.12, 0.0), *_c(0.08, 0.6), (0.92, 0.6)], [(0.74, 0.0), (0.74, 1.0)]],
        [[(0.15, 0.0), (0.1, 0.55), (0.5, 0.62), (0.95, 0.5)],
         [(0.8, 0.0), (0.75, 0.6), (0.7, 1.0)]]],
    5: [[[(0.9, 0.02), *_c(0.24, 0.02), *_c(0.18, 0.46), (0.55, 0.38), (0.88, 0.58),
          (0.85, 0.88), (0.5, 1.0), (0.08, 0.88)]],
        [[(0.24, 0.02), *_c(0.18, 0.46), (0.55, 0.38), (0.88, 0.58), (0.85, 0.88), (0.5, 1.0),
          (0.08, 0.88)], [(0.24, 0.02), (0.92, 0.0)]]],
    6: [[[(0.78, 0.0), (0.45, 0.2), (0.16, 0.56), (0.2, 0.88), (0.5, 1.0), (0.82, 0.85),
          (0.78, 0.58), (0.45, 0.52), (0.18, 0.7)]],
        [[(0.7, 0.0), (0.35, 0.35), (0.2, 0.75), (0.45, 1.0), (0.8, 0.85), (0.7, 0.55),
          (0.35, 0.62)]]],
    7: [[[(0.04, 0.04), *_c(0.96, 0.02), (0.56, 0.5), (0.36, 1.0)]],
        [[(0.04, 0.04), *_c(0.96, 0.02), (0.56, 0.5), (0.36, 1.0)], [(0.3, 0.52), (0.86, 0.48)]],
        [[(0.02, 0.15), *_c(0.05, 0.02), *_c(0.95, 0.04), (0.7, 0.45), (0.58, 1.0)]]],
    8: [[[(0.8, 0.12), (0.5, 0.0), (0.2, 0.12), (0.25, 0.35), (0.5, 0.5), (0.8, 0.68),
          (0.78, 0.92), (0.5, 1.0), (0.2, 0.9), (0.22, 0.68), (0.5, 0.5), (0.75, 0.32),
          (0.8, 0.12)]],
        [[(0.5, 0.0), (0.18, 0.2), (0.5, 0.44), (0.82, 0.2), (0.5, 0.0)],
         [(0.5, 0.44), (0.12, 0.72), (0.5, 1.0), (0.88, 0.72), (0.5, 0.44)]]],
    9: [[[(0.86, 0.2), (0.6, 0.42), (0.24, 0.4), (0.14, 0.18), (0.4, 0.0), (0.74, 0.04),
          (0.86, 0.2), (0.82, 0.6), (0.78, 1.0)]],
        [[(0.86, 0.2), (0.6, 0.42), (0.24, 0.4), (0.14, 0.18), (0.4, 0.0), (0.74, 0.04),
          *_c(0.86, 0.2), (0.82, 0.6), (0.78, 1.0)]],
        [[(0.84, 0.12), (0.5, 0.0), (0.15, 0.2), (0.35, 0.45), (0.84, 0.2), (0.8, 0.7),
          (0.6, 1.0), (0.35, 0.95)]]],
}
#: number of pen-stroke "writers" (templates) of the style "strokes"
NUM_WRITERS = 100


def _spline(points: np.ndarray, per_segment: int = 12) -> np.ndarray:
    """Catmull-Rom spline through ``points`` (n, 2); a repeated point makes a corner."""
    p = np.concatenate([points[:1], points, points[-1:]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3))
    out.append(p[-2:-1])
    return np.concatenate(out)


@functools.lru_cache(maxsize=1)
def _stroke_templates() -> torch.Tensor:
    """(NUM_WRITERS, 10, 56, 56) templates of the style "strokes": each writer (fixed seed)
    draws every digit with one of its skeleton variants (:data:`_SKELETONS`), control points
    moved by up to 0.08 of the box, an aspect ratio of 0.6..1.15 (digits wider than tall
    fitted to the box's width, as MNIST does) and a round pen 6-15 % of the digit's height wide,
    like the pen strokes of MNIST's writers (docs/gnm.md, "S-Acc across handwriting styles")."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    size, box = 200, 120.0
    out = torch.zeros(NUM_WRITERS, 10, _T, _T)
    for wi in range(NUM_WRITERS):
        aspect = rng.uniform(0.6, 1.15)
        pen = rng.uniform(0.06, 0.15) * box
        for d in range(10):
            variants = _SKELETONS[d]
            strokes = variants[rng.integers(len(variants))]
            im = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(im)
            for stroke in strokes:
                pts = np.asarray(stroke, dtype=np.float64)
                jit = rng.uniform(-0.08, 0.08, pts.shape)
                same = np.r_[False, (np.diff(pts, axis=0) == 0).all(1)]
                for i in np.nonzero(same)[0]:
                    jit[i] = jit[i - 1]
                pts = (pts + jit) * [aspect * box, box] + [(size - aspect * box) / 2, 40]
                curve = [tuple(q) for q in _spline(pts)]
                draw.line(curve, fill=255, width=int(round(pen)), joint="curve")
                for q in (curve[0], curve[-1]):
                    r = pen / 2
                    draw.ellipse((q[0] - r, q[1] - r, q[0] + r, q[1] + r), fill=255)
            out[wi, d] = _place_glyph(im, fit=True)
    return out


def _style_templates(style: str) -> torch.Tensor:
    """(F, 10, 56, 56) templates of a :data:`STYLES` entry."""
    if style == "fonts":
        return _glyph_templates()[0]
    if style == "strokes":
        return _stroke_templates()
    if style == "fonts+strokes":  # a third fonts, two thirds pen strokes
        fonts = _glyph_templates()[0]
        repeats = NUM_WRITERS // (2 * len(fonts))
        return torch.cat([fonts.repeat(repeats, 1, 1, 1), _stroke_templates()])
    return _glyph_templates(_OTHER_FONT_FILES)[0]


class SyntheticDigits(_DigitBank):
    """Built-in handwritten-like digits, used when no MNIST files are given.

    Digit templates of a ``style`` (:data:`STYLES`) are rendered large: ``"fonts"`` (the
    default, the digits of the datasets) the glyphs of ten fonts bundled with matplotlib
    (DejaVu Sans/Serif, Computer Modern, STIX; regular, bold, italic); ``"strokes"`` digits
    drawn with a round pen along the skeletons of 100 writers (:func:`_stroke_templates`);
    ``"fonts+strokes"`` both; ``"other-fonts"`` ten other matplotlib fonts (DejaVu Sans Mono,
    bold DejaVu Serif and STIX, Computer Modern bold and typewriter), a style the S-Acc checkers
    are not trained on (docs/gnm.md, "S-Acc across handwriting styles").  Then each bank entry
    gets a random affine warp (rotation +-15 deg, shear +-0.35, anisotropic scale 0.8..1.1,
    small shift), a smooth elastic displacement field (4x4 random field upsampled bicubically),
    a random stroke width (soft erosion or dilation) and is box-downsampled to 28x28,
    MNIST-style (digit about 20 px tall, centred by mass).  The bank (``per_class`` entries per
    digit, entry ``i`` has label ``i % 10``) is a deterministic function of ``seed`` and
    ``style`` and built once (about 0.2 s; the pen-stroke templates take about 1 s more, once).
    """

    def __init__(self, seed: int = 0, per_class: int = 500, style: str = "fonts") -> None:
        self.seed = int(seed)
        self.per_class = int(per_class)
        if self.per_class < 1:
            raise DatasetError(f"per_class must be >= 1, got {per_class}")
        if style not in STYLES:
            raise DatasetError(f"unknown digit style {style!r}; valid styles: {', '.join(STYLES)}")
        self.style = style
        images, labels = _synthetic_bank(self.seed, self.per_class, style)
        self._init_bank(images, labels)

    def describe(self) -> str:
        return f"SyntheticDigits(seed={self.seed}, per_class={self.per_class}, style={self.style})"

    def config(self) -> dict:
        cfg = dict(source="synthetic", seed=self.seed, per_class=self.per_class)
        if self.style != "fonts":  # the default bank keeps its configuration and cache keys
            cfg["style"] = self.style
        return cfg


_UP4 = upsample_matrix(4, _T)


def _max3(x: torch.Tensor) -> torch.Tensor:
    """3x3 max filter (separable, zero-padded; inputs are >= 0 or handled by the caller)."""
    p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    h = torch.maximum(torch.maximum(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
    return torch.maximum(torch.maximum(h[..., :-2, :], h[..., 1:-1, :]), h[..., 2:, :])


@functools.lru_cache(maxsize=4)
def _synthetic_bank(seed: int, per_class: int, style: str) -> tuple[torch.Tensor, torch.Tensor]:
    templates = _style_templates(style)
    nf = templates.shape[0]
    n = 10 * per_class
    labels = torch.arange(n) % 10
    rng = ItemRNG(seed, np.arange(n))
    font = rng.randint(0, nf, ).view(-1)
    p = rng.uniform(8, dtype=torch.float32)             # affine parameters
    field = rng.uniform(2, 4, 4, low=-1.0, high=1.0)     # elastic field
    stroke = rng.uniform(dtype=torch.float32).view(-1)
    out = torch.empty(n, DIGIT_SIZE, DIGIT_SIZE, dtype=torch.uint8)
    step = 2048
    for s in range(0, n, step):
        sl = slice(s, s + step)
        src = templates[font[sl], labels[sl]][:, None]   # (b, 1, 56, 56)
        b = src.shape[0]
        q = p[sl]
        ang = (q[:, 0] * 2 - 1) * math.radians(15)
        shear = (q[:, 1] * 2 - 1) * 0.35
        sx = 0.8 + 0.3 * q[:, 2]
        sy = 0.9 + 0.2 * q[:, 3]
        tx = (q[:, 4] * 2 - 1) * 0.06
        ty = (q[:, 5] * 2 - 1) * 0.06
        cos, sin = torch.cos(ang), torch.sin(ang)
        # output -> input coordinates: inverse of (rotate . shear . scale)
        a11, a12 = cos / sx, (sin + shear * cos) / sx
        a21, a22 = -sin / sy, (cos - shear * sin) / sy
        xs = (torch.arange(_T, dtype=torch.float32) + 0.5) * (2.0 / _T) - 1.0
        gx0, gy0 = xs.view(1, 1, _T), xs.view(1, _T, 1)
        # smooth displacement: bilinear upsampling of the 4x4 field as two small matmuls
        disp = torch.matmul(torch.matmul(_UP4, field[sl]), _UP4.T)      # (b, 2, 56, 56)
        amp = (0.05 + 0.07 * q[:, 6]).view(-1, 1, 1)

        def v(t):
            return t.view(-1, 1, 1)
        gx = v(a11) * gx0 + v(a12) * gy0 + v(tx) + disp[:, 0] * amp
        gy = v(a21) * gx0 + v(a22) * gy0 + v(ty) + disp[:, 1] * amp
        warped = F.grid_sample(src, torch.stack([gx, gy], -1), mode="bilinear",
                               padding_mode="zeros", align_corners=False)
        # stroke width: soft erosion (w < 0) or dilation (w > 0, up to two 3x3 steps)
        w = (stroke[sl] * 2.3 - 0.5).view(-1, 1, 1, 1)
        dil = _max3(warped)
        ero = -_max3(-warped)
        x = torch.where(w >= 0, warped + w.clamp(0, 1) * (dil - warped),
                        warped + (-w) * (ero - warped))
        x = torch.where(w > 1, _max3(dil) * (w - 1) + dil * (2 - w), x)
        x = F.avg_pool2d(x, 2)                                   # 56 -> 28, box filter
        x = (x * 1.25).clamp(0, 1)                               # MNIST-like saturated strokes
        out[sl] = (x[:, 0] * 255).round().to(torch.uint8)
    return out, labels


# ---------------------------------------------------------------------------------------------

_warned_synthetic = False


@functools.lru_cache(maxsize=8)
def _cached_idx(path: str, kind: str, part: str) -> IDXDigits:
    return IDXDigits(path, kind, part)


def default_digit_source(path: str | os.PathLike | None = None, split: str = "train"):
    """The digits of a dataset split: IDX MNIST when ``path`` or ``$PYRO_SCENES_MNIST`` is set,
    else :class:`SyntheticDigits`.

    Splits never share a digit: with MNIST, ``train`` scenes use the first five sixths of the
    training file, ``val`` its last sixth and ``test`` the ``t10k`` file (:data:`IDX_SPLITS`);
    the synthetic banks of the splits have different seeds (:data:`SYNTHETIC_SPLIT_SEEDS`).
    Using the synthetic source is logged (``logging.WARNING`` once per process, then INFO).
    Sources are cached per process, so repeated calls are cheap.
    """
    global _warned_synthetic
    if split not in SYNTHETIC_SPLIT_SEEDS:
        raise DatasetError(f"unknown split {split!r}; valid splits: "
                           f"{', '.join(SYNTHETIC_SPLIT_SEEDS)}")
    if path is None:
        path = os.environ.get(MNIST_ENV) or None
    if path is not None:
        src = _cached_idx(str(Path(path).expanduser().resolve()), *IDX_SPLITS[split])
        log.info("using MNIST digits from %s (%s part) for the %s split", src.images_path,
                 src.part, split)
        return src
    msg = (f"no MNIST files given (option mnist_path / ${MNIST_ENV}): using the built-in "
           "synthetic handwritten-like digits (font glyphs with random affine, elastic and "
           "stroke-width distortions)")
    if not _warned_synthetic:
        log.warning(msg)
        _warned_synthetic = True
    else:
        log.info(msg)
    return _cached_synthetic(SYNTHETIC_SPLIT_SEEDS[split])


@functools.lru_cache(maxsize=4)
def _cached_synthetic(seed: int) -> SyntheticDigits:
    return SyntheticDigits(seed)
