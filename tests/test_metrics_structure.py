"""Structure checker machinery with tiny settings (the real checkers are measured by
``python -m inference.metrics.structure --report``; numbers in docs/metrics.md)."""
import logging

import pytest
import torch

from datasets import make_dataset
from inference.metrics import rules
from inference.metrics._detector import CROP, HALF, STRIDE, CropNet, decode, sample_crops
from inference.metrics.broken import (_corrupt_layout, applicable, corrupt, corruption_kinds, inpaint,
                                      render_digits)
from inference.metrics.structure import StructureChecker, TrainSettings, cache_dir

TINY = TrainSettings(num_scenes=8, steps=2, batch_size=8, width=8)


def test_cropnet_dense_equals_crops():
    torch.manual_seed(0)
    net = CropNet(1, 10, 2, width=8).eval()
    img = torch.rand(1, 1, 40, 48)
    logits, off, ext = net.dense(img)
    assert logits.shape == (1, 11, 6, 7)
    padded = torch.nn.functional.pad(img, (HALF, HALF, HALF, HALF))
    for i, j in ((0, 0), (2, 3), (5, 6)):
        crop = padded[:, :, STRIDE * i:STRIDE * i + CROP, STRIDE * j:STRIDE * j + CROP]
        lc, oc, ec = net(crop)
        assert torch.allclose(lc[0], logits[0, :, i, j], atol=1e-5)
        assert torch.allclose(oc[0], off[0, :, i, j], atol=1e-5)
        assert torch.allclose(ec[0], ext[0, :, i, j], atol=1e-5)


def test_decode_merges_votes_and_thresholds():
    logits = torch.full((1, 3, 4, 4), -10.0)
    logits[:, 0] = 10.0  # background everywhere
    # object of class 1 centred at (12, 12): two half-confident votes from cells (1,1) and (1,2)
    logits[0, :, 1, 1] = torch.tensor([0.0, -5.0, 0.2])
    logits[0, :, 1, 2] = torch.tensor([0.0, -5.0, 0.2])
    # a confident class-0 object at cell (3, 0)
    logits[0, :, 3, 0] = torch.tensor([-5.0, 5.0, -5.0])
    off = torch.zeros(1, 2, 4, 4)
    off[0, 0, 1, 1], off[0, 0, 1, 2] = 0.5, -0.5
    det = decode(logits, off, torch.zeros(1, 0, 4, 4))[0]
    assert len(det) == 2
    order = torch.argsort(det.centres[:, 1])
    assert det.centres[order].tolist() == [[12.0, 8.0], [0.0, 24.0]]
    assert det.labels[order].tolist() == [1, 0]
    assert det.scores.min() > 0.5


def test_sample_crops_targets():
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(2, 1, 64, 64, dtype=torch.uint8)
    centres = torch.tensor([[[20.0, 20.0], [0.0, 0.0]], [[40.0, 30.0], [50.0, 50.0]]])
    labels = torch.tensor([[3, -1], [5, 7]])
    valid = torch.tensor([[True, False], [True, True]])
    crops, tgt, off, ext, pos = sample_crops(img, centres, labels, valid, 64, g)
    assert crops.shape == (64, 1, CROP, CROP) and crops.dtype == torch.float32
    assert pos[:32].all() and set(tgt[pos].tolist()) <= {4, 6, 8}
    assert (off[pos].abs() <= 4.5 / STRIDE).all()
    assert (tgt[~pos] != 4).all()


def test_checker_trains_caches_and_reloads(tmp_path, monkeypatch, caplog):
    ck = StructureChecker.load("mnist4", cache=tmp_path, settings=TINY, image_size=64)
    files = list((tmp_path / "checkers").glob("mnist-v*.pt"))
    assert len(files) == 1 and ck.image_size == 64
    res = ck.check(torch.rand(3, 1, 64, 64))
    assert res.valid.shape == (3,) and len(res.reasons) == 3 and len(res.detections) == 3
    assert 0.0 <= res.accuracy <= 1.0
    # any MNIST dataset shares the family's cached detector; no retraining
    monkeypatch.setattr(StructureChecker, "train", classmethod(lambda *a, **k: pytest.fail("retrained")))
    ck10 = StructureChecker.load("mnist10", cache=tmp_path, settings=TINY, image_size=64)
    assert ck10.dataset == "mnist10"
    monkeypatch.undo()
    # a corrupt cache file is replaced
    files[0].write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        StructureChecker.load("mnist4", cache=tmp_path, settings=TINY, image_size=64)
    assert "unreadable" in caplog.text
    torch.load(files[0], weights_only=True)
    # images of another size are resized; wrong channel count is an error
    assert ck.check(torch.rand(2, 1, 128, 128)).valid.shape == (2,)
    with pytest.raises(ValueError):
        ck.check(torch.rand(2, 3, 64, 64))


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_SCENES_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PYRO_SCENES_CACHE")
    assert cache_dir().name == "pyro_scenes"
    with pytest.raises(ValueError):
        StructureChecker.load("sprites-unique", cache=tmp_path)


@pytest.mark.parametrize("name", ["mnist4", "mnist10"])
def test_every_corruption_breaks_the_rule_on_ground_truth(name):
    """Corrupted layouts violate the rule (judged on the layout itself, no detector)."""
    ds = make_dataset(name, "test", num_scenes=40)
    b = ds.generate(range(40))
    rule = rules.rule_mnist4 if name == "mnist4" else rules.rule_mnist10
    g = torch.Generator().manual_seed(0)
    for i in range(40):
        v = b["valid"][i]
        labels = b["labels"][i][v].tolist()
        centres = [tuple(c) for c in b["centers"][i][v].tolist()]
        assert rule(torch.tensor(centres), torch.tensor(labels))[0]
        for kind in ("control",) + corruption_kinds(name):
            lab, cen = _corrupt_layout(labels, centres, name == "mnist10", kind, ds.image_size, ds.patch, g)
            ok, why = rule(torch.tensor(cen), torch.tensor(lab))
            assert ok == (kind == "control"), (kind, why)


def test_render_digits_and_corrupt_shapes():
    ds = make_dataset("mnist4-10", "test", num_scenes=6)
    b = ds.generate(range(6))
    g = torch.Generator().manual_seed(0)
    for kind in corruption_kinds("mnist4-10"):
        imgs = corrupt(ds, b, kind, g)
        assert imgs.shape == b["image"].shape and imgs.min() >= 0 and imgs.max() <= 1
        app = applicable(b, kind)
        assert app.dtype == torch.bool and app.shape == (6,)
    # the ink of a re-rendered layout stays inside the digit patches
    p = ds.patch
    img = render_digits(ds.digit_source, [([3], [(40.0, 50.0)])], ds.image_size, p, g)
    ys, xs = img[0, 0].nonzero(as_tuple=True)
    assert xs.min() >= 40 - p // 2 and xs.max() < 40 + p // 2
    assert ys.min() >= 50 - p // 2 and ys.max() < 50 + p // 2


def test_inpaint_restores_smooth_images():
    img = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32).clone()
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 10:15, 12:18] = True
    broken = img.clone()
    broken[:, :, 10:15, 12:18] = 1.0
    fixed = inpaint(broken, mask, iters=300)
    assert torch.allclose(fixed, img, atol=0.02)


def test_arrow_corruptions_point_at_a_shared_shape():
    ds = make_dataset("arrow", "test", num_scenes=8)
    b = ds.generate(range(8))
    g = torch.Generator().manual_seed(0)
    wrong = corrupt(ds, b, "wrong-object", g)
    none = corrupt(ds, b, "no-arrow", g)
    assert wrong.shape == none.shape == b["image"].shape
    # erasing removes the arrow's colour from its mask
    m = b["arrow_mask"][:, None].expand_as(b["image"])
    assert (none - b["image"])[m].abs().mean() > 0.05
    grown = (torch.nn.functional.max_pool2d(b["arrow_mask"][:, None].float(), 5, 1, 2) > 0).expand_as(m)
    assert torch.equal(none[~grown], b["image"][~grown])
    assert torch.equal(wrong[~grown & (wrong == none)], none[~grown & (wrong == none)])
    assert (wrong != none).any()
