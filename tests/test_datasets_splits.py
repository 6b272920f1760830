"""Dataset splits never share a digit (issue 10): MNIST train/val from disjoint parts of the
training file and test from t10k; synthetic digits from a bank per split, training unchanged."""
import hashlib

import pytest
import torch

from datasets import DatasetError, MultiDigit, make_dataset
from datasets import digits as ddigits
from datasets.cache import cache_key

from test_datasets_io import fake_mnist, write_idx

#: recorded before splits had their own digits: the training scenes (and the bank they draw
#: from) must stay byte-identical, a GNM model is trained on them
TRAIN_HASHES = {("mnist4", 128): "d5c38716f43c0b72", ("mnist4", 64): "d3a1f7d6120f4d38",
                ("mnist10", 128): "2d1ccfc6bed3bd99", ("mnist4-10", 64): "060480aed9241d7b"}
TRAIN_KEY = "mnist4-train-64-993b2799de1d9431.npz"
BANK_SHA256 = "3ba1fff4045bdd36c061c9a13380e24dc5f1a734a8f5dbcf7f39b3ea3e85c274"


@pytest.fixture(autouse=True)
def _no_mnist_env(monkeypatch):
    monkeypatch.delenv(ddigits.MNIST_ENV, raising=False)


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("name, size", sorted(TRAIN_HASHES))
def test_synthetic_train_split_unchanged(name, size):
    ds = make_dataset(name, "train", num_scenes=64, image_size=size)
    assert _sha(ds.generate(range(64))["image"])[:16] == TRAIN_HASHES[name, size]


def test_synthetic_train_bank_and_cache_key_unchanged():
    assert _sha(ddigits.default_digit_source(split="train").images) == BANK_SHA256
    assert cache_key(make_dataset("mnist4", "train", num_scenes=64)) == TRAIN_KEY
    # a MultiDigit built directly (no split) uses the training digits too
    assert MultiDigit(4, "mnist4").digit_source is ddigits.default_digit_source(split="train")


def _patches(batch, p=28):
    """The 28x28 digit patches of MNIST-4 scenes at 128 px (they never overlap)."""
    out = []
    for b in range(batch["image"].shape[0]):
        for c in batch["centers"][b].long().tolist():
            y, x = c[1] - p // 2, c[0] - p // 2
            out.append(batch["image"][b, 0, y:y + p, x:x + p])
    return torch.stack(out)


def _rows(x: torch.Tensor) -> set:
    return {bytes(r) for r in (x * 255).round().to(torch.uint8).flatten(1).numpy()}


def test_synthetic_splits_share_no_digit():
    banks = {s: _rows(ddigits.default_digit_source(split=s).resized(28))
             for s in ("train", "val", "test")}
    assert not banks["train"] & banks["test"] and not banks["train"] & banks["val"]
    assert not banks["val"] & banks["test"]
    for split in ("val", "test"):
        ds = make_dataset("mnist4", split, num_scenes=30)
        assert ds.digit_source.config()["seed"] == ddigits.SYNTHETIC_SPLIT_SEEDS[split]
        used = _rows(_patches(ds.generate(range(30))))
        assert used <= banks[split] and not used & banks["train"]
    # another digit source means another cache key, so a stale cache is never read
    keys = {cache_key(make_dataset("mnist4", s, num_scenes=64)) for s in ("train", "val", "test")}
    assert len(keys) == 3


def _write_mnist(tmp_path, n_train=60):
    imgs, labels = fake_mnist(n_train)                    # pixel value 150 + index
    write_idx(tmp_path, "train", imgs=imgs, labels=labels)
    t_imgs, t_labels = fake_mnist(30)
    t_imgs[t_imgs > 0] += 70                              # t10k: 220 + index
    write_idx(tmp_path, "t10k", imgs=t_imgs, labels=t_labels)
    return tmp_path


def _digit_ids(ds, n=20):
    """Encoded ids (pixel value) of the digits used by ``n`` MNIST-4 scenes."""
    patches = _patches(ds.generate(range(n)))
    return set((patches[:, 10, 10] * 255).round().long().tolist())


@pytest.mark.parametrize("as_env", [False, True])
def test_mnist_splits_share_no_digit(tmp_path, monkeypatch, as_env):
    _write_mnist(tmp_path)
    opts = {}
    if as_env:
        monkeypatch.setenv(ddigits.MNIST_ENV, str(tmp_path))
    else:
        opts["mnist_path"] = tmp_path
    ids = {s: _digit_ids(make_dataset("mnist4", s, num_scenes=20, **opts))
           for s in ("train", "val", "test")}
    assert ids["train"] <= set(range(150, 200))          # first 5/6 of the training file
    assert ids["val"] <= set(range(200, 210))            # its last sixth
    assert ids["test"] <= set(range(220, 250))           # t10k
    cfg = make_dataset("mnist4", "val", num_scenes=2, **opts).config()["digit_source"]
    assert cfg["part"] == "val" and cfg["count"] == 10


def test_mnist_parts_and_images_file(tmp_path):
    _write_mnist(tmp_path)
    src = {p: ddigits.IDXDigits(tmp_path, part=p) for p in ("all", "train", "val")}
    assert [len(src[p]) for p in ("all", "train", "val")] == [60, 50, 10]
    assert torch.equal(src["val"].get(0)[0], src["all"].get(50)[0])
    # an images file: its t10k sibling gives the test digits
    test = ddigits.IDXDigits(tmp_path / "train-images-idx3-ubyte", kind="t10k")
    assert len(test) == 30 and test.images_path.name.startswith("t10k")
    ds = make_dataset("mnist4", "test", num_scenes=5,
                      mnist_path=tmp_path / "train-images-idx3-ubyte")
    assert _digit_ids(ds, 5) <= set(range(220, 250))
    with pytest.raises(DatasetError, match="part"):
        ddigits.IDXDigits(tmp_path, part="half")


def test_mnist_test_split_needs_t10k(tmp_path):
    write_idx(tmp_path, "train", imgs=fake_mnist(60)[0], labels=fake_mnist(60)[1])
    make_dataset("mnist4", "train", num_scenes=2, mnist_path=tmp_path)
    with pytest.raises(DatasetError, match="t10k"):
        make_dataset("mnist4", "test", num_scenes=2, mnist_path=tmp_path)
    with pytest.raises(DatasetError, match="t10k"):
        make_dataset("mnist4", "test", num_scenes=2,
                     mnist_path=tmp_path / "train-images-idx3-ubyte")
