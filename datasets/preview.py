"""Preview CLI: a PNG grid of samples with ground-truth overlays.

    python -m datasets.preview --dataset mnist4 --out grid.png [--num 16] [--seed 0]
        [--split train] [--image-size N] [--mnist-path PATH]

Each tile shows the scene with the ground-truth boxes and labels drawn on it (sprites and
arrow scenes also get the outlines of the visible regions; arrow scenes mark the odd object and
the arrow's axis), and next to it the segmentation (background black, one colour per object).
The PNG is written atomically (temporary file + ``os.replace``); on any error nothing is
written and the exit status is non-zero: 2 for bad input (options, digit files, an unwritable
``--out``), as for ``python -m inference.svi``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import click
import numpy as np

from .files import atomic_write
from .errors import DatasetError
from .registry import DATASET_NAMES, make_dataset

PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255)], dtype=np.uint8)
_TILE = 256
#: the most scenes in one grid (8 x 8 tiles of 512 x 256 pixels); more take long and show nothing more
MAX_NUM = 64


def _font(size: int):
    from PIL import ImageFont
    try:
        import matplotlib
        p = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
        return ImageFont.truetype(str(p), size)
    except Exception:  # pragma: no cover
        return ImageFont.load_default()


def _label_text(name: str, item: dict, i: int) -> str:
    lab = int(item["labels"][i])
    if name.startswith("sprites"):
        from .sprites import CLASS_NAMES
        return CLASS_NAMES[lab]
    if name == "arrow":
        from .arrow import CLASS_NAMES
        odd = " ODD" if i == int(item["odd_index"]) else ""
        return CLASS_NAMES[lab] + odd
    return str(lab)


def render_tile(name: str, item: dict):
    """PIL image: the scene with overlays, and its segmentation, side by side."""
    from PIL import Image, ImageDraw

    img = item["image"]
    size = img.shape[-1]
    scale = max(1, _TILE // size)
    arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, 2)
    arr = arr.repeat(scale, 0).repeat(scale, 1)
    seg = item["segmentation"].numpy().repeat(scale, 0).repeat(scale, 1)
    n_valid = int(item["num_objects"])
    if not name.startswith("mnist"):
        # outlines of the visible regions, in each object's palette colour
        edge = np.zeros_like(seg, dtype=bool)
        edge[:, 1:] |= seg[:, 1:] != seg[:, :-1]
        edge[1:, :] |= seg[1:, :] != seg[:-1, :]
        owner = np.maximum(seg, np.pad(seg, ((0, 0), (1, 0)))[:, :-1])
        owner = np.maximum(owner, np.pad(seg, ((1, 0), (0, 0)))[:-1, :])
        m = edge & (owner > 0)
        arr[m] = PALETTE[(owner[m] - 1) % len(PALETTE)]
    im = Image.fromarray(arr)
    draw = ImageDraw.Draw(im)
    font = _font(max(10, scale * size // 18))
    for i in range(n_valid):
        if not bool(item["valid"][i]):
            continue
        x0, y0, x1, y1 = (float(v) * scale for v in item["boxes"][i])
        col = tuple(int(c) for c in PALETTE[i % len(PALETTE)])
        if x1 > x0:
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=col, width=2)
        draw.text((x0 + 2, max(0, y0 - font.size - 2)), _label_text(name, item, i),
                  fill=col, font=font)
    if name == "arrow":
        x0, y0, x1, y1 = (float(v) * scale for v in item["arrow_box"])
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 255), width=1)
        p = item["arrow_tip"] * scale
        r = max(2, scale)
        draw.ellipse([float(p[0]) - r, float(p[1]) - r, float(p[0]) + r, float(p[1]) + r],
                     fill=(255, 0, 0))  # the tip
    if name.startswith("mnist"):
        rp = item["rule_params"].tolist()
        text = f"MNIST-4 n={rp[0]}" if int(item["variant_id"]) == 0 else "MNIST-10"
        draw.text((3, im.height - font.size - 4), text, fill=(255, 255, 0), font=font)
    seg_rgb = np.zeros(seg.shape + (3,), dtype=np.uint8)
    fg = seg > 0
    seg_rgb[fg] = PALETTE[(seg[fg] - 1) % len(PALETTE)]
    tile = Image.new("RGB", (im.width * 2 + 4, im.height), (255, 255, 255))
    tile.paste(im, (0, 0))
    tile.paste(Image.fromarray(seg_rgb), (im.width + 4, 0))
    return tile


def render_grid(name: str, batch: dict, cols: int | None = None):
    from PIL import Image

    n = batch["image"].shape[0]
    tiles = [render_tile(name, {k: v[i] for k, v in batch.items()}) for i in range(n)]
    cols = cols or max(1, math.ceil(math.sqrt(n / 2)))  # tiles are twice as wide as tall
    rows = math.ceil(n / cols)
    w, h = tiles[0].size
    pad = 6
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (40, 40, 40))
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid.paste(t, (pad + c * (w + pad), pad + r * (h + pad)))
    return grid


def save_png_atomic(image, out: Path) -> None:
    atomic_write(out, lambda f: image.save(f, format="PNG", optimize=True))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", "name", required=True, type=click.Choice(DATASET_NAMES),
              help="Dataset name.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output PNG file (its folder must exist).")
@click.option("--num", default=16, show_default=True, type=int, help=f"Number of scenes (1 to {MAX_NUM}).")
@click.option("--seed", default=0, show_default=True, type=int, help="Base seed.")
@click.option("--split", default="train", show_default=True,
              type=click.Choice(["train", "val", "test"]), help="Split of the scenes.")
@click.option("--image-size", default=None, type=int, help="Image size (dataset default).")
@click.option("--mnist-path", default=None, type=click.Path(path_type=Path),
              help="Folder with MNIST IDX files (mnist* datasets; default $PYRO_SCENES_MNIST "
                   "or synthetic digits).")
def main(name, out, num, seed, split, image_size, mnist_path):
    """Write a PNG grid of NUM scenes of DATASET with ground-truth overlays."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not 1 <= num <= MAX_NUM:
        raise click.BadParameter(f"must be between 1 and {MAX_NUM}, got {num} (for more scenes, write several "
                                 f"grids with different --seed)", param_hint="--num")
    if out.suffix.lower() != ".png":
        raise click.BadParameter(f"{out} must end in .png", param_hint="--out")
    if not out.parent.is_dir():
        raise click.BadParameter(f"folder {out.parent} does not exist", param_hint="--out")
    opts = {}
    if mnist_path is not None:
        if not name.startswith("mnist"):
            raise click.BadParameter(f"only applies to the mnist* datasets, not {name}",
                                     param_hint="--mnist-path")
        opts["mnist_path"] = mnist_path
    try:
        ds = make_dataset(name, split, num_scenes=num, image_size=image_size, seed=seed, **opts)
        grid = render_grid(name, ds.generate(range(num)))
    except DatasetError as e:
        raise click.UsageError(str(e)) from None
    try:
        save_png_atomic(grid, out)
    except OSError as e:
        raise click.BadParameter(f"cannot write {out}: {e.strerror or e}", param_hint="--out") from None
    click.echo(f"wrote {out} ({num} {name} scenes, {grid.width}x{grid.height} px)")


if __name__ == "__main__":  # pragma: no cover
    main()
