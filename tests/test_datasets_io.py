"""Digit files (IDX), cache files and the preview CLI of the datasets package."""
import gzip
import logging
import os
import struct
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from datasets import DatasetError, MultiDigit, Sprites, make_dataset
from datasets import cache as dcache
from datasets import digits as ddigits
from datasets.preview import main as preview_main


@pytest.fixture(autouse=True)
def _no_mnist_env(monkeypatch):
    monkeypatch.delenv(ddigits.MNIST_ENV, raising=False)


# ----------------------------------------------------------------------------- IDX files
N_IDX = 30


def fake_mnist(n=N_IDX):
    """Images whose pixels encode their index: 20x12 block of value 150 + i, label i % 10."""
    imgs = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        imgs[i, 4:24, 8:20] = 150 + i
    labels = (np.arange(n) % 10).astype(np.uint8)
    return imgs, labels


def idx_bytes(arr, magic):
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(folder, kind="train", gz=False, imgs=None, labels=None):
    folder.mkdir(parents=True, exist_ok=True)
    fi, fl = fake_mnist()
    imgs = fi if imgs is None else imgs
    labels = fl if labels is None else labels
    for name, arr, magic in ((f"{kind}-images-idx3-ubyte", imgs, 2051),
                             (f"{kind}-labels-idx1-ubyte", labels, 2049)):
        data = idx_bytes(arr, magic)
        if gz:
            with gzip.open(folder / (name + ".gz"), "wb") as f:
                f.write(data)
        else:
            (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("layout", ["raw", "gz", "torchvision"])
def test_idx_reader_reads_small_files(tmp_path, layout):
    if layout == "raw":
        write_idx(tmp_path)
    elif layout == "gz":
        write_idx(tmp_path, gz=True)
    else:
        write_idx(tmp_path / "MNIST" / "raw", gz=True)
    src = ddigits.IDXDigits(tmp_path)
    imgs, labels = fake_mnist()
    assert len(src) == N_IDX and src.num_classes == 10
    for i in (0, 7, 29):
        x, y = src.get(i)
        assert x.shape == (28, 28) and x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(imgs[i]).float() / 255)
        assert y == i % 10
    # vectorised sampling returns instances of the requested labels
    want = torch.tensor([3, 3, 0, 9, 5])
    out = src.sample(want, torch.Generator().manual_seed(0))
    assert out.shape == (5, 28, 28)
    idx = (out[:, 10, 10] * 255).round().long() - 150
    assert torch.equal(idx % 10, want)
    # select with u picks the floor(u * count)-th instance of the label
    sel = src.select_indices(torch.tensor([4, 4, 4]), torch.tensor([0.0, 0.5, 0.99]))
    assert sel.tolist() == [4, 14, 24]


def test_idx_images_file_path_and_env(tmp_path, monkeypatch):
    write_idx(tmp_path)
    src = ddigits.IDXDigits(tmp_path / "train-images-idx3-ubyte")
    assert len(src) == N_IDX
    monkeypatch.setenv(ddigits.MNIST_ENV, str(tmp_path))
    assert len(ddigits.IDXDigits()) == N_IDX
    chosen = ddigits.default_digit_source()  # the training split's part of the file
    assert isinstance(chosen, ddigits.IDXDigits) and len(chosen) == N_IDX - N_IDX // 6


def test_default_source_is_synthetic_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="datasets.digits"):
        src = ddigits.default_digit_source()
    assert isinstance(src, ddigits.SyntheticDigits)
    assert "synthetic" in caplog.text


def test_scenes_use_real_digits(tmp_path):
    write_idx(tmp_path, gz=True)
    ds = make_dataset("mnist4", num_scenes=20, mnist_path=tmp_path)
    assert isinstance(ds.digit_source, ddigits.IDXDigits)
    batch = ds.generate(range(20))
    # MNIST-4 patches never overlap: each 28x28 patch is exactly one source digit
    for b in range(20):
        for j in range(4):
            cx, cy = batch["centers"][b, j].long().tolist()
            patch = batch["image"][b, 0, cy - 14:cy + 14, cx - 14:cx + 14]
            value = int(round(float(patch[10, 10]) * 255))
            k = value - 150
            assert 0 <= k < N_IDX and k % 10 == int(batch["labels"][b, j])
            expect = torch.from_numpy(fake_mnist()[0][k]).float() / 255
            assert torch.equal(patch, expect)
            # the mask is the digit's ink and the box is its block
            assert batch["boxes"][b, j].tolist() == [cx - 6, cy - 10, cx + 6, cy + 10]
    # digit_source may also be a path, and scenes are reproducible with it
    ds2 = MultiDigit(20, "mnist4", seed=ds.seed, digit_source=str(tmp_path))
    assert torch.equal(ds2[5]["image"], batch["image"][5])


def corrupt_cases():
    imgs, labels = fake_mnist()
    good_img = idx_bytes(imgs, 2051)
    good_lab = idx_bytes(labels, 2049)
    return {
        "wrong magic": (idx_bytes(imgs, 2049), good_lab, "magic"),
        "truncated payload": (good_img[:-100], good_lab, "truncated"),
        "truncated header": (good_img[:6], good_lab, "truncated"),
        "count mismatch": (good_img, idx_bytes(labels[:-1], 2049), "images but"),
        "bad label": (good_img, idx_bytes(np.full(N_IDX, 12, np.uint8), 2049), "labels must"),
        "trailing bytes": (good_img + b"xx", good_lab, "trailing"),
    }


@pytest.mark.parametrize("case", list(corrupt_cases()))
def test_idx_bad_input(tmp_path, case):
    img_data, lab_data, words = corrupt_cases()[case]
    (tmp_path / "train-images-idx3-ubyte").write_bytes(img_data)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(lab_data)
    with pytest.raises(DatasetError, match=words) as e:
        ddigits.IDXDigits(tmp_path)
    assert "idx" in str(e.value) and str(tmp_path) in str(e.value)


def test_idx_missing_and_corrupt_gzip(tmp_path):
    with pytest.raises(DatasetError, match="not found") as e:
        ddigits.IDXDigits(tmp_path)
    assert "train-images-idx3-ubyte" in str(e.value)
    with pytest.raises(DatasetError, match="does not exist"):
        ddigits.IDXDigits(tmp_path / "nope")
    write_idx(tmp_path, gz=True)
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz"):
        ddigits.IDXDigits(tmp_path)
    with pytest.raises(DatasetError):
        make_dataset("mnist10", num_scenes=2, mnist_path=tmp_path)


# ----------------------------------------------------------------------------- cache
@pytest.mark.parametrize("name", ["sprites-unique", "mnist4-10", "arrow"])
def test_cache_round_trip(tmp_path, name):
    ds = make_dataset(name, "val", num_scenes=9, seed=2)
    path = dcache.write_split(ds, tmp_path / "split.npz", batch_size=4)
    assert sorted(os.listdir(tmp_path)) == ["split.npz"], "no temporary files left"
    back = dcache.CachedDataset(path)
    assert len(back) == 9 and back.max_objects == ds.max_objects and back.name == name
    for i in (0, 4, 8):
        a, b = ds[i], back[i]
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            if k == "image":
                assert (a[k] - b[k]).abs().max() <= 0.5 / 255 + 1e-6
            else:
                assert torch.equal(a[k], b[k]), k
    batch = back.generate([1, 2])
    assert torch.equal(batch["masks"], ds.generate([1, 2])["masks"])


def test_cache_lossless_float_images(tmp_path):
    ds = Sprites(5, seed=1)
    back = dcache.CachedDataset(dcache.write_split(ds, tmp_path / "f.npz", image_dtype="float32"))
    assert torch.equal(back[3]["image"], ds[3]["image"])


def test_cache_rejects_truncated_and_garbage(tmp_path):
    ds = Sprites(20, seed=1)
    path = dcache.write_split(ds, tmp_path / "s.npz")
    data = path.read_bytes()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated.npz"):
        dcache.CachedDataset(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(DatasetError, match="junk.npz"):
        dcache.CachedDataset(junk)
    with pytest.raises(DatasetError, match="not found"):
        dcache.CachedDataset(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(DatasetError, match="not a pyro-scenes cache"):
        dcache.CachedDataset(other)
    # a member whose compressed data is damaged, with the zip directory intact
    flipped = bytearray(data)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("image.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 50
    flipped[start:start + 64] = bytes(64)
    dmg = tmp_path / "damaged.npz"
    dmg.write_bytes(bytes(flipped))
    with pytest.raises(DatasetError, match="damaged.npz"):
        dcache.CachedDataset(dmg)


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    ds = Sprites(4, seed=1)
    target = tmp_path / "a.npz"

    def broken(f, **arrays):
        f.write(b"PK partial data")
        raise OSError("disk full")

    monkeypatch.setattr(dcache.np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        dcache.write_split(ds, target)
    assert os.listdir(tmp_path) == []
    with pytest.raises(DatasetError, match="does not exist"):
        dcache.write_split(ds, tmp_path / "nodir" / "a.npz")
    with pytest.raises(DatasetError, match=".npz"):
        dcache.write_split(ds, tmp_path / "a.h5")


def test_cached_writes_once_and_repairs(tmp_path):
    ds = make_dataset("mnist4", "val", num_scenes=6)
    c1 = dcache.cached(ds, tmp_path)
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("mnist4-val-6-")
    mtime = os.stat(c1.path).st_mtime_ns
    c2 = dcache.cached(make_dataset("mnist4", "val", num_scenes=6), tmp_path)
    assert c2.path == c1.path and os.stat(c2.path).st_mtime_ns == mtime
    # other settings -> another file
    dcache.cached(make_dataset("mnist4", "val", num_scenes=6, seed=1), tmp_path)
    assert len(os.listdir(tmp_path)) == 2
    # a corrupt file is rewritten
    c1.path.write_bytes(b"garbage")
    c3 = dcache.cached(ds, tmp_path)
    assert torch.equal(c3[2]["masks"], ds[2]["masks"])


# ----------------------------------------------------------------------------- preview CLI
def test_preview_writes_png(tmp_path):
    out = tmp_path / "grid.png"
    res = CliRunner().invoke(preview_main, ["--dataset", "mnist4", "--out", str(out),
                                            "--num", "4", "--seed", "1"])
    assert res.exit_code == 0, res.output
    im = Image.open(out)
    assert im.format == "PNG" and im.width > 256 and im.height >= 256
    assert sorted(os.listdir(tmp_path)) == ["grid.png"]
    res = CliRunner().invoke(preview_main, ["--dataset", "sprites-random", "--out",
                                            str(tmp_path / "s.png"), "--num", "3",
                                            "--image-size", "32"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("args, words", [
    (["--dataset", "clevr"], "clevr"),
    (["--dataset", "mnist4", "--num", "0"], "--num"),
    (["--dataset", "sprites-unique", "--image-size", "4"], "image too small"),
    (["--dataset", "mnist4", "--mnist-path", "{tmp}/nowhere"], "does not exist"),
    (["--dataset", "mnist10", "--mnist-path", "{tmp}/bad"], "magic"),
    (["--dataset", "arrow", "--mnist-path", "{tmp}"], "mnist"),
])
def test_preview_bad_input(tmp_path, args, words):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train-images-idx3-ubyte").write_bytes(idx_bytes(fake_mnist()[0], 1234))
    (bad / "train-labels-idx1-ubyte").write_bytes(idx_bytes(fake_mnist()[1], 2049))
    out = tmp_path / "out" / "grid.png"
    out.parent.mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["--out", str(out)]
    if "--num" not in args:
        args += ["--num", "2"]
    res = CliRunner().invoke(preview_main, args)
    assert res.exit_code != 0
    assert words in res.output
    assert os.listdir(out.parent) == [], "nothing written"


def test_preview_bad_output(tmp_path):
    res = CliRunner().invoke(preview_main, ["--dataset", "mnist4", "--out",
                                            str(tmp_path / "missing" / "g.png")])
    assert res.exit_code != 0 and "does not exist" in res.output
    res = CliRunner().invoke(preview_main, ["--dataset", "mnist4", "--out",
                                            str(tmp_path / "g.jpg")])
    assert res.exit_code != 0 and ".png" in res.output
    assert os.listdir(tmp_path) == []
