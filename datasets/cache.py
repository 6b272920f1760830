"""Write a generated split to disk once and read it back.

Format: ONE ``.npz`` file written with :func:`numpy.savez_compressed` (zip + deflate).  Why npz:
it needs no dependency beyond numpy (HDF5 would add h5py), it is portable and inspectable, and
loading each array once gives random access to every item from memory.  To keep files and
memory small, boolean per-pixel fields (``masks``, ``visible_masks``, ``arrow_mask``) are
bit-packed with :func:`numpy.packbits`, images are stored as ``uint8`` (``round(255 x)``; pass
``image_dtype="float32"`` for a lossless copy) and integer fields in the narrowest integer type
that holds them (``segmentation`` becomes ``uint8``).  A JSON ``__meta__`` entry records the
format version, the dataset's class, name and settings, and each field's dtype, per-item shape
and encoding; reading restores the exact item dicts (dtypes and shapes) of the generator.

Writes are atomic: the file is written to a temporary file in the same folder, flushed,
``fsync``-ed and moved into place with :func:`os.replace`, so a crash never leaves a
half-written cache under the final name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetError
from .files import atomic_write

log = logging.getLogger(__name__)

#: the environment variable naming the cache folder
CACHE_ENV = "PYRO_SCENES_CACHE"
FORMAT = "pyro-scenes-cache"
VERSION = 1
_IMAGE_DTYPES = ("uint8", "float32")


def _narrow_int(a: np.ndarray) -> np.ndarray:
    if a.size == 0:
        return a.astype(np.int8)
    lo, hi = int(a.min()), int(a.max())
    for dt in (np.uint8, np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return a.astype(dt)
    return a


def _encode(key: str, t: torch.Tensor, image_dtype: str):
    """numpy array (leading item dim kept) and its meta entry."""
    a = t.detach().cpu().numpy()
    n = a.shape[0]
    meta = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(a.shape[1:])}
    if a.dtype == np.bool_ and a.ndim >= 2:
        meta["encoding"] = "packbits"
        return np.packbits(a.reshape(n, -1), axis=1), meta
    if key == "image" and image_dtype == "uint8":
        meta["encoding"] = "uint8-image"
        return np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8), meta
    if np.issubdtype(a.dtype, np.integer):
        meta["encoding"] = "int"
        return _narrow_int(a), meta
    meta["encoding"] = "raw"
    return a, meta


def _decode(a: np.ndarray, meta: dict) -> np.ndarray:
    """Decode a batch (leading dim) of stored values."""
    shape, enc = tuple(meta["shape"]), meta["encoding"]
    n = a.shape[0]
    if enc == "packbits":
        count = int(np.prod(shape, dtype=np.int64))
        return np.unpackbits(a, axis=1, count=count).reshape((n,) + shape).astype(np.bool_)
    if enc == "uint8-image":
        return a.astype(np.float32) / np.float32(255.0)
    return a.astype(np.dtype(meta["dtype"]))


def write_split(dataset, path: str | os.PathLike, batch_size: int = 256,
                image_dtype: str = "uint8", progress: bool = False) -> Path:
    """Generate every item of ``dataset`` and write them to the npz file ``path`` atomically.

    Uses the dataset's batched ``generate`` when it has one.  Returns the path.
    """
    if image_dtype not in _IMAGE_DTYPES:
        raise DatasetError(f"image_dtype must be one of {', '.join(_IMAGE_DTYPES)}, "
                           f"got {image_dtype!r}")
    if batch_size < 1:
        raise DatasetError(f"batch_size must be >= 1, got {batch_size}")
    path = Path(path)
    if path.suffix != ".npz":
        raise DatasetError(f"{path}: cache files must end in .npz")
    if not path.parent.is_dir():
        raise DatasetError(f"{path}: folder {path.parent} does not exist")
    n = len(dataset)
    if n == 0:
        raise DatasetError(f"{path}: refusing to cache an empty dataset")
    chunks: dict[str, list] = {}
    metas: dict[str, dict] = {}
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc=f"caching {path.name}", unit="batch")
    for s in starts:
        ids = list(range(s, min(n, s + batch_size)))
        if hasattr(dataset, "generate"):
            batch = dataset.generate(ids)
        else:
            batch = torch.utils.data.default_collate([dataset[i] for i in ids])
        for k, v in batch.items():
            arr, meta = _encode(k, v, image_dtype)
            chunks.setdefault(k, []).append(arr)
            metas.setdefault(k, meta)
    arrays = {}
    for k, parts in chunks.items():
        dt = np.result_type(*[p.dtype for p in parts])
        arrays[k] = np.concatenate([p.astype(dt) for p in parts])
    info = {
        "format": FORMAT, "version": VERSION, "num_items": n, "fields": metas,
        "dataset": {
            "class": type(dataset).__name__,
            "name": getattr(dataset, "registry_name", getattr(dataset, "name", None)),
            "split": getattr(dataset, "split", None),
            "config": dataset.config() if hasattr(dataset, "config") else None,
            "max_objects": getattr(dataset, "max_objects", None),
            "image_size": getattr(dataset, "image_size", None),
            "num_channels": getattr(dataset, "num_channels", None),
        },
    }
    arrays["__meta__"] = np.array(json.dumps(info))
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def default_cache_dir() -> Path:
    """The cache folder of datasets, S-Acc checkers and the like: ``$PYRO_SCENES_CACHE``, else ``~/.cache/pyro_scenes``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyro_scenes"


class CachedDataset(Dataset):
    """A split written by :func:`write_split`, read back with the same item dicts.

    All arrays are loaded (decompressed) once when the file is opened; items are decoded on
    access (bits unpacked, images back to float in [0, 1]).  A missing, truncated or corrupt
    file raises :class:`DatasetError` naming the file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: cache file not found")
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if "__meta__" not in z.files:
                    raise DatasetError(f"{self.path}: not a pyro-scenes cache file "
                                       "(no __meta__ entry)")
                info = json.loads(str(z["__meta__"]))
                arrays = {k: z[k] for k in info.get("fields", {})}
        except DatasetError:
            raise
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, KeyError,
                json.JSONDecodeError) as e:
            raise DatasetError(f"{self.path}: corrupt or truncated cache file "
                               f"({type(e).__name__}: {e})") from None
        if info.get("format") != FORMAT or info.get("version") != VERSION:
            raise DatasetError(f"{self.path}: unsupported cache format "
                               f"{info.get('format')!r} version {info.get('version')!r}")
        n = info["num_items"]
        for k, a in arrays.items():
            if a.shape[0] != n:
                raise DatasetError(f"{self.path}: field {k!r} has {a.shape[0]} items, "
                                   f"expected {n} (corrupt cache file)")
        self.info = info
        self.fields = info["fields"]
        self._arrays = arrays
        self.num_scenes = n
        ds = info.get("dataset") or {}
        self.name = ds.get("name")
        self.max_objects = ds.get("max_objects")
        self.image_size = ds.get("image_size")
        self.num_channels = ds.get("num_channels")

    def __len__(self) -> int:
        return self.num_scenes

    def generate(self, indices) -> dict:
        """Batched read (same interface as the generators' ``generate``)."""
        idx = np.asarray(torch.as_tensor(indices).long().reshape(-1).numpy())
        if idx.size and (idx.min() < -self.num_scenes or idx.max() >= self.num_scenes):
            raise IndexError(f"index out of range for {self.num_scenes} cached scenes")
        return {k: torch.from_numpy(_decode(self._arrays[k][idx], m))
                for k, m in self.fields.items()}

    def __getitems__(self, indices) -> list:
        batch = self.generate(list(indices))
        return [{k: v[j] for k, v in batch.items()} for j in range(len(indices))]

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not -self.num_scenes <= index < self.num_scenes:
            raise IndexError(f"index {index} out of range for {self.num_scenes} cached scenes")
        return {k: v[0] for k, v in self.generate([index]).items()}

    def __repr__(self) -> str:
        return f"CachedDataset({str(self.path)!r}, {self.num_scenes} scenes of {self.name})"


def cache_key(dataset) -> str:
    """File name identifying a dataset's content: name + hash of class, size and settings."""
    desc = {
        "class": type(dataset).__name__,
        "num_scenes": len(dataset),
        "config": dataset.config(),
        "format": VERSION,
    }
    digest = hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
    name = getattr(dataset, "registry_name", getattr(dataset, "name", type(dataset).__name__))
    split = getattr(dataset, "split", None)
    return f"{name}{'-' + split if split else ''}-{len(dataset)}-{digest}.npz"


def cached(dataset, cache_dir: str | os.PathLike, batch_size: int = 256,
           image_dtype: str = "uint8", progress: bool = False) -> CachedDataset:
    """Return ``dataset`` as a :class:`CachedDataset`, writing it to ``cache_dir`` only once.

    The file name comes from :func:`cache_key` (dataset name, split, size and a hash of its
    settings), so a change of any setting writes a new file.  A corrupt existing file is
    reported in the log and rewritten.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = cache_key(dataset)
    if image_dtype != "uint8":
        stem = stem[:-4] + f"-{image_dtype}.npz"
    path = cache_dir / stem
    if path.exists():
        try:
            return CachedDataset(path)
        except DatasetError as e:
            log.warning("%s; regenerating it", e)
    write_split(dataset, path, batch_size=batch_size, image_dtype=image_dtype,
                progress=progress)
    return CachedDataset(path)
