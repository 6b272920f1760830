"""Generators: rules, ground truth, determinism, bad settings (datasets package)."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate

from datasets import (DATASET_NAMES, ArrowScenes, DatasetError, MultiDigit, Sprites,
                      make_dataset)
from datasets.sprites import UNIQUE_COLORS




# ----------------------------------------------------------------------------- helpers
def check_ground_truth(batch, image_size, channels):
    """Invariants every dataset's ground truth must satisfy."""
    img, masks, vis, seg = (batch["image"], batch["masks"], batch["visible_masks"],
                            batch["segmentation"])
    b, n = masks.shape[:2]
    assert img.shape == (b, channels, image_size, image_size)
    assert img.dtype == torch.float32 and img.min() >= 0 and img.max() <= 1
    assert masks.dtype == vis.dtype == torch.bool and seg.dtype == torch.long
    valid = batch["valid"]
    assert torch.equal(valid.sum(1), batch["num_objects"])
    # padded objects are empty
    assert not masks[~valid].any() and not vis[~valid].any()
    # visible region = full shape minus everything listed after it (above it)
    for i in range(n):
        above = masks[:, i + 1:].any(1)
        assert torch.equal(vis[:, i], masks[:, i] & ~above)
    # visible regions and background cover every pixel exactly once
    count = vis.long().sum(1) + (seg == 0).long()
    assert (count == 1).all()
    for i in range(n):
        assert torch.equal(seg == i + 1, vis[:, i])
    # boxes: inside the image and equal to the tight box of the full mask
    boxes = batch["boxes"]
    for bi in range(b):
        for i in range(n):
            if not valid[bi, i]:
                assert (boxes[bi, i] == 0).all()
                continue
            m = masks[bi, i]
            assert m.any(), "every object has a non-empty mask"
            ys, xs = m.nonzero(as_tuple=True)
            expect = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
            assert boxes[bi, i].tolist() == expect
    x0, y0, x1, y1 = boxes[valid].unbind(-1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= image_size).all() \
        and (y1 <= image_size).all() and (x1 > x0).all() and (y1 > y0).all()


def assert_items_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def erode(mask, r):
    """Binary erosion with a (2r+1)^2 square (pixels outside count as False)."""
    m = (~mask).float()[:, None]
    return ~(F.max_pool2d(F.pad(m, (r, r, r, r), value=1.0), 2 * r + 1, 1)[:, 0] > 0)


# ----------------------------------------------------------------------------- sprites
def test_sprites_default_rules():
    ds = Sprites(64, seed=3)
    batch = ds.generate(range(64))
    check_ground_truth(batch, 64, 3)
    assert ds.max_objects == 3
    # exactly one object per class, random depth order
    assert torch.equal(batch["labels"].sort(1).values, torch.arange(3).expand(64, 3))
    assert len({tuple(r) for r in batch["labels"].tolist()}) > 3
    assert torch.equal(batch["depth_order"], torch.arange(3).expand(64, 3))
    # fully inside the image
    c, s = batch["centers"], batch["sizes"]
    assert ((c - s[..., None]) >= 0).all() and ((c + s[..., None]) <= 64).all()
    assert ((s >= 0.15 * 64 - 1e-4) & (s <= 0.25 * 64 + 1e-4)).all()
    # background channels are integers 0..127
    bg = batch["background_color"] * 255
    assert torch.allclose(bg, bg.round(), atol=1e-4) and bg.max() <= 127 and bg.min() >= 0


def test_sprites_unique_colour_follows_class():
    ds = Sprites(40, variant="unique", seed=1)
    batch = ds.generate(range(40))
    table = torch.tensor(UNIQUE_COLORS, dtype=torch.float32) / 255
    assert torch.equal(batch["colors"], table[batch["labels"]])
    img = batch["image"]
    for i in range(3):
        inner = erode(batch["visible_masks"][:, i], 2)       # away from antialiased edges
        assert inner.sum() > 1000
        pix = img.permute(0, 2, 3, 1)[inner]                 # (P, 3)
        owner_col = batch["colors"][:, i, None, None, :].expand(-1, 64, 64, -1)[inner]
        assert torch.allclose(pix, owner_col, atol=1e-6)
    bg_inner = erode(batch["segmentation"] == 0, 2)
    pix = img.permute(0, 2, 3, 1)[bg_inner]
    expect = batch["background_color"][:, None, None, :].expand(-1, 64, 64, -1)[bg_inner]
    assert torch.allclose(pix, expect, atol=1e-6)


def test_sprites_random_colours_and_antialias():
    batch = Sprites(30, variant="random", seed=2).generate(range(30))
    col = batch["colors"] * 255
    assert torch.allclose(col, col.round(), atol=1e-4)
    assert col.min() >= 128 and col.max() <= 255
    assert len(set(col.round().flatten().tolist())) > 50
    # antialiasing gives intermediate values on edges; without it every pixel is a pure colour
    soft = Sprites(4, seed=0).generate(range(4))
    hard = Sprites(4, seed=0, antialias=False).generate(range(4))
    assert torch.equal(soft["labels"], hard["labels"])
    for b in range(4):
        pure = set(map(tuple, hard["colors"][b].tolist()))
        pure.add(tuple(hard["background_color"][b].tolist()))
        pix = set(map(tuple, hard["image"][b].permute(1, 2, 0).reshape(-1, 3).tolist()))
        assert pix <= pure
        pix_soft = set(map(tuple, soft["image"][b].permute(1, 2, 0).reshape(-1, 3).tolist()))
        assert len(pix_soft - pure) > 10
    # masks agree between the two renderings on almost every pixel
    assert (soft["masks"] != hard["masks"]).float().mean() < 0.01


def test_sprites_more_objects_and_repeats():
    ds = Sprites(20, num_objects=5, allow_repeats=True, seed=4)
    batch = ds.generate(range(20))
    check_ground_truth(batch, 64, 3)
    assert batch["labels"].shape == (20, 5) and ds.max_objects == 5
    assert batch["labels"].min() >= 0 and batch["labels"].max() <= 2
    two = Sprites(10, num_objects=2).generate(range(10))
    assert (two["labels"][:, 0] != two["labels"][:, 1]).all()
    small = Sprites(3, image_size=32).generate(range(3))
    check_ground_truth(small, 32, 3)


@pytest.mark.parametrize("kwargs, words", [
    (dict(num_objects=0), "num_objects"),
    (dict(num_objects=4), "allow_repeats"),
    (dict(variant="plaid"), "unknown sprites variant"),
    (dict(image_size=8), "image too small"),
    (dict(size_range=(0.3, 0.6)), "cannot fit"),
    (dict(num_scenes=-1), "num_scenes"),
])
def test_sprites_bad_settings(kwargs, words):
    kwargs = {"num_scenes": 10, **kwargs}
    with pytest.raises(DatasetError, match=words):
        Sprites(**kwargs)
    assert issubclass(DatasetError, ValueError)


# ----------------------------------------------------------------------------- multi-digit
def test_mnist4_consecutive_clockwise():
    ds = MultiDigit(60, "mnist4", seed=5)
    batch = ds.generate(range(60))
    check_ground_truth(batch, 128, 1)
    lab, c = batch["labels"], batch["centers"]
    n = lab[:, 0]
    assert (n >= 0).all() and (n <= 6).all() and len(set(n.tolist())) >= 5
    assert torch.equal(lab, n[:, None] + torch.arange(4))
    assert torch.equal(batch["rule_params"][:, 0], n)
    assert (batch["rule_params"][:, 1:] == -1).all() and (batch["variant_id"] == 0).all()
    tl, tr, br, bl = c.unbind(1)
    # corners of an axis-aligned rectangle, clockwise from top-left
    assert torch.equal(tl[:, 1], tr[:, 1]) and torch.equal(br[:, 1], bl[:, 1])
    assert torch.equal(tl[:, 0], bl[:, 0]) and torch.equal(tr[:, 0], br[:, 0])
    assert (tr[:, 0] > tl[:, 0]).all() and (bl[:, 1] > tl[:, 1]).all()
    # random position and size
    assert (tr[:, 0] - tl[:, 0]).std() > 5 and (bl[:, 1] - tl[:, 1]).std() > 5
    assert tl[:, 0].std() > 5
    # each digit's ink lies within its 28x28 patch, about 20 px tall
    boxes = batch["boxes"]
    assert ((boxes[..., 0] >= c[..., 0] - 14) & (boxes[..., 2] <= c[..., 0] + 14)).all()
    heights = boxes[..., 3] - boxes[..., 1]
    assert 14 <= heights.float().median() <= 24


def test_mnist10_groups_in_quadrants():
    batch = MultiDigit(60, "mnist10", seed=6).generate(range(60))
    check_ground_truth(batch, 128, 1)
    assert torch.equal(batch["labels"], torch.arange(10).expand(60, 10))
    boxes = batch["boxes"]
    # quadrant of every digit from its whole ink box: 0 TL, 1 TR, 2 BR, 3 BL
    right = boxes[..., 0] >= 64
    assert (right == (boxes[..., 2] > 64)).all()
    bottom = boxes[..., 1] >= 64
    assert (bottom == (boxes[..., 3] > 64)).all()
    quad = torch.where(bottom, torch.where(right, 2, 3), torch.where(right, 1, 0))
    orientations = set()
    for groups_q in zip(*[quad[:, list(g)] for g in ((0, 1), (2, 3, 4), (5, 6, 7), (8, 9))]):
        qs = [int(g[0]) for g in groups_q]
        for g in groups_q:
            assert (g == g[0]).all(), "a group lies in one quadrant"
        assert {qs[0], qs[3]} == {0, 2}, "2-digit groups on the TL/BR diagonal"
        assert {qs[1], qs[2]} == {1, 3}, "3-digit groups on TR/BL"
        orientations.add((qs[0], qs[1]))
    assert len(orientations) == 4, "both pairs appear either way round"
    rp = batch["rule_params"]
    assert (rp[:, 0] == -1).all()
    assert torch.equal(rp[:, 1:], quad[:, [0, 2, 5, 8]])


def test_mnist4_10_mix_and_padding():
    ds = MultiDigit(200, "mnist4-10", seed=7)
    assert ds.max_objects == 10
    batch = ds.generate(range(200))
    small = ds.generate(range(30))
    check_ground_truth(small, 128, 1)
    vid = batch["variant_id"]
    assert 60 <= vid.sum() <= 140
    four = vid == 0
    assert (batch["num_objects"][four] == 4).all() and (batch["num_objects"][~four] == 10).all()
    assert (batch["labels"][four][:, 4:] == -1).all()
    assert not batch["valid"][four][:, 4:].any() and not batch["masks"][four][:, 4:].any()
    rp = batch["rule_params"]
    assert (rp[four, 0] >= 0).all() and (rp[~four, 0] == -1).all()
    assert (rp[four, 1:] == -1).all() and (rp[~four, 1:] >= 0).all()
    lab4 = batch["labels"][four][:, :4]
    assert torch.equal(lab4, lab4[:, :1] + torch.arange(4))


def test_multidigit_image_size_scales_digits():
    batch = MultiDigit(10, "mnist10", image_size=64, seed=1).generate(range(10))
    check_ground_truth(batch, 64, 1)
    h = batch["boxes"][..., 3] - batch["boxes"][..., 1]
    assert 6 <= h.float().median() <= 13


@pytest.mark.parametrize("kwargs, words", [
    (dict(variant="mnist5"), "unknown multi-digit variant"),
    (dict(image_size=24), "image too small"),
    (dict(digit_scale=3.0), "cannot fit"),
    (dict(num_scenes=-3), "num_scenes"),
])
def test_multidigit_bad_settings(kwargs, words):
    kwargs = {"num_scenes": 5, **kwargs}
    with pytest.raises(DatasetError, match=words):
        MultiDigit(**kwargs)


def test_synthetic_digits_source():
    from datasets.digits import SyntheticDigits
    src = SyntheticDigits(0)
    assert src.num_classes == 10 and len(src) == 5000
    img, label = src.get(13)
    assert img.shape == (28, 28) and img.dtype == torch.float32 and label == 3
    assert 0 <= img.min() and img.max() <= 1 and img.max() > 0.9
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9])
    x = src.sample(labels, g)
    assert x.shape == (11, 28, 28)
    # each sample is a bank entry of the requested label
    bank = src.resized(28)
    for lab, im in zip(labels, x):
        hits = (bank == im).flatten(1).all(1).nonzero().flatten()
        assert hits.numel() >= 1 and (src.labels[hits] == lab).all()
    # MNIST-like: ink about 20 px tall and centred
    rows = (bank[:500] > 0.5).any(2).float()
    heights = rows.sum(1)
    assert 15 <= heights.median() <= 24
    # the distortions make every entry different
    assert len({tuple(bank[i].flatten()[::7].tolist()) for i in range(0, 500, 10)}) == 50


# ----------------------------------------------------------------------------- arrow
def test_arrow_rules():
    ds = ArrowScenes(40, seed=8)
    batch = ds.generate(range(40))
    check_ground_truth(batch, 128, 3)
    lab, odd = batch["labels"], batch["odd_index"]
    for b in range(40):
        counts = sorted(torch.bincount(lab[b], minlength=3).tolist())
        assert counts == [0, 1, 2], "exactly two objects share a shape"
        assert (lab[b] == lab[b, odd[b]]).sum() == 1, "odd_index is the odd one"
    assert len(set(lab[torch.arange(40), odd].tolist())) == 3
    # the arrow points from its centre at the odd object's centre, and at no other object
    tail, tip, c = batch["arrow_tail"], batch["arrow_tip"], batch["centers"]
    mid = (tail + tip) / 2
    d = F.normalize(tip - tail, dim=-1)
    to_obj = F.normalize(c - mid[:, None], dim=-1)
    angle = torch.acos((to_obj * d[:, None]).sum(-1).clamp(-1, 1))      # (B, 3)
    assert (angle[torch.arange(40), odd] < 1e-3).all()
    assert torch.equal(angle.argmin(1), odd)
    # arrow mask and box: tight box, tip inside it, no overlap with objects
    am = batch["arrow_mask"]
    for b in range(40):
        ys, xs = am[b].nonzero(as_tuple=True)
        box = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert batch["arrow_box"][b].tolist() == box
        assert box[0] - 1 <= tip[b, 0] <= box[2] + 1 and box[1] - 1 <= tip[b, 1] <= box[3] + 1
    assert not (am[:, None] & batch["masks"]).any()
    # depth order: objects standing lower in the image (nearer) are listed later
    bottoms = batch["boxes"][..., 3]
    assert (bottoms[:, 1:] >= bottoms[:, :-1] - 1).all()
    # occlusion happens in some scenes
    assert (batch["visible_masks"].sum((2, 3)) < batch["masks"].sum((2, 3))).any()


def test_arrow_bad_settings():
    with pytest.raises(DatasetError, match="image too small"):
        ArrowScenes(5, image_size=16)


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", DATASET_NAMES)
def test_same_seed_same_data_alone_or_in_batch(name):
    a = make_dataset(name, "train", num_scenes=12, seed=3)
    b = make_dataset(name, "train", num_scenes=12, seed=3)
    ids = [9, 2, 5, 11]
    batch = a.generate(ids)
    for j, i in enumerate(ids):
        item = b[i]
        assert_items_equal(item, {k: v[j] for k, v in batch.items()})
    # fixed shapes: default_collate works and agrees with generate
    collated = default_collate([a[i] for i in ids])
    assert_items_equal(collated, batch)
    # another seed or another split gives other scenes
    other_seed = make_dataset(name, "train", num_scenes=12, seed=4)[9]
    other_split = make_dataset(name, "val", num_scenes=12, seed=3)[9]
    assert not torch.equal(other_seed["image"], batch["image"][0])
    assert not torch.equal(other_split["image"], batch["image"][0])


def test_chunked_generation_and_workers():
    ds = Sprites(50, seed=11)
    ds.chunk_size = 7
    chunked = ds.generate(range(50))
    ds.chunk_size = 256
    assert_items_equal(chunked, ds.generate(range(50)))
    loader = DataLoader(ds, batch_size=10, num_workers=2, shuffle=False)
    out = list(loader)
    assert_items_equal(default_collate([x for b in out for x in
                                        [{k: v[i] for k, v in b.items()} for i in range(10)]]),
                       chunked)
    # iter_batches yields the same scenes
    assert_items_equal(next(ds.iter_batches(8)), ds.generate(range(8)))


def test_registry_defaults_and_errors():
    assert DATASET_NAMES == ("sprites-unique", "sprites-random", "mnist4", "mnist10",
                             "mnist4-10", "arrow")
    sizes = {(n, s): len(make_dataset(n, s)) for n in ("sprites-unique", "mnist4", "arrow")
             for s in ("train", "val", "test")}
    assert sizes[("sprites-unique", "train")] == 50_000
    assert sizes[("sprites-unique", "val")] == 100
    assert sizes[("sprites-unique", "test")] == 1_000
    assert sizes[("mnist4", "train")] == 60_000 and sizes[("arrow", "val")] == 6_000
    assert sizes[("mnist4", "test")] == 6_000
    ds = make_dataset("sprites-random", num_scenes=3, image_size=32, num_objects=2)
    assert ds.variant == "random" and ds.image_size == 32 and ds.max_objects == 2
    assert make_dataset("mnist10", num_scenes=2).image_size == 128
    assert make_dataset("sprites-unique", num_scenes=2).image_size == 64
    assert len(make_dataset("arrow", num_scenes=0)) == 0
    with pytest.raises(DatasetError) as e:
        make_dataset("clevr")
    for n in DATASET_NAMES:
        assert n in str(e.value)
    with pytest.raises(DatasetError, match="split"):
        make_dataset("mnist4", "dev")
    with pytest.raises(DatasetError, match="unknown option.*wobble"):
        make_dataset("mnist4", num_scenes=2, wobble=1)
    with pytest.raises(DatasetError, match="num_scenes"):
        make_dataset("arrow", num_scenes=-1)
    with pytest.raises(IndexError):
        make_dataset("arrow", num_scenes=2)[2]


def test_package_does_not_import_model_code():
    import subprocess
    import sys
    code = ("import sys, datasets; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('pyro_scenes', 'guides', 'inference')]; print(bad); assert not bad")
    subprocess.run([sys.executable, "-c", code], check=True)
