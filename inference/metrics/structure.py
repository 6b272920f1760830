"""S-Acc: automatic structure checkers for the GNM scene datasets, judging images alone.

A checker detects the objects of an image with a small detector/classifier
(:mod:`inference.metrics._detector`) trained once on the dataset generator's own scenes, then
checks the dataset's rule (:mod:`inference.metrics.rules`). The trained detector is cached under
``$PYRO_SCENES_CACHE`` (default ``~/.cache/pyro_scenes``) in ``checkers/``, keyed by the checker
family, :data:`CHECKER_VERSION`, the training settings and the generator's configuration (digit
source included), and retrained when missing or unreadable.

* ``mnist`` family (datasets ``mnist4``, ``mnist10``, ``mnist4-10``): one detector for the ten
  digits, trained on ``mnist4-10`` training scenes of the requested image size, resized to
  128 px; object centres are the centres of the digits' tight boxes. For scenes of the built-in
  synthetic digits the training scenes use the fonts and pen-stroke digits of
  :data:`STYLE_DIGITS` and the crops get style augmentation, so that the checker also reads
  other handwriting (docs/gnm.md, "S-Acc across handwriting styles").
* ``arrow`` family: three shape classes plus the arrow, with the arrow's direction regressed;
  images are resized to 128 px for the detector; object centres are the dataset's ``centers``,
  the arrow's is the midpoint of its axis.

A checker is specific to an image size (64 px for the CPU GNM configuration, 128 px for the
authors'); images of another size are resized to it.

``python -m inference.metrics.structure --dataset mnist4 --report`` measures a checker's
accuracy on real test scenes and its rejection rate on deliberately broken scenes
(:mod:`inference.metrics.broken`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from datasets.cache import CACHE_ENV, default_cache_dir

from . import rules
from ._detector import CropNet, Detections, decode, train_cropnet

log = logging.getLogger(__name__)

#: 2: checkers for synthetic digits trained on the STYLE_DIGITS bank with style augmentation
CHECKER_VERSION = 2
#: the digits (``SyntheticDigits`` arguments) a checker for scenes of synthetic digits is
#: trained on: fonts and pen strokes, a seed no dataset split uses, 1,000 digits per class
STYLE_DIGITS = dict(seed=100, per_class=1000, style="fonts+strokes")
FAMILIES = {"mnist4": "mnist", "mnist10": "mnist", "mnist4-10": "mnist", "arrow": "arrow"}
#: the resolution the detector works at: images of any size are resized to it (digits are then
#: about 20 px tall, the arrow scenes' objects 20-36 px)
WORK_SIZE = {"mnist": 128, "arrow": 128}
#: decoding settings (detection threshold on the noisy-or of a group's votes, merge radius in px
#: at the working size): the arrow scenes' objects are bigger and their detector less certain
DECODE = {"mnist": dict(threshold=0.5, merge_radius=10.0), "arrow": dict(threshold=0.7, merge_radius=13.0)}


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def cache_dir(path=None) -> Path:
    """The cache folder: ``path``, else ``$PYRO_SCENES_CACHE``, else ``~/.cache/pyro_scenes``."""
    return Path(path).expanduser() if path is not None else default_cache_dir()


@dataclass
class TrainSettings:
    """How a checker's detector is trained (part of the cache key)."""
    num_scenes: int = 2000
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32
    seed: int = 0
    augment: bool = True
    threads: int = 1          # training is run single-threaded (deterministic, robust to a busy CPU)
    time_limit: Optional[float] = None  # seconds; not part of the cache key

    def key(self) -> Dict:
        d = asdict(self)
        d.pop("time_limit")
        d.pop("threads")
        return d


@dataclass
class StructureResult:
    valid: torch.Tensor                 # (B,) bool
    reasons: List[str]
    detections: List[Detections] = field(repr=False)

    @property
    def accuracy(self) -> float:
        return float(self.valid.float().mean()) if self.valid.numel() else float("nan")

    def summary(self) -> Dict:
        return dict(accuracy=self.accuracy, num_images=int(self.valid.numel()),
                    reasons=dict(Counter(r for r in self.reasons if r != "ok").most_common()))


def _family(dataset: str) -> str:
    if dataset not in FAMILIES:
        raise ValueError(f"no structure checker for dataset {dataset!r}; checkers exist for "
                         f"{', '.join(FAMILIES)}")
    return FAMILIES[dataset]


def _training_dataset(family: str, num_scenes: int, image_size: Optional[int], dataset_options: Dict,
                      seed: int = 0):
    """The training scenes of a checker: the dataset's own, except for scenes of the built-in
    synthetic digits, whose checker is trained on the :data:`STYLE_DIGITS` bank (and with style
    augmentation, :func:`style_training`) so that it reads other handwriting too (docs/gnm.md,
    "S-Acc across handwriting styles")."""
    from datasets import make_dataset
    name = "mnist4-10" if family == "mnist" else "arrow"
    ds = make_dataset(name, "train", num_scenes=num_scenes, image_size=image_size, seed=seed, **dataset_options)
    if style_training(ds):
        from datasets.digits import SyntheticDigits
        options = dict(dataset_options, digit_source=SyntheticDigits(**STYLE_DIGITS))
        ds = make_dataset(name, "train", num_scenes=num_scenes, image_size=image_size, seed=seed, **options)
    return ds


def style_training(ds) -> bool:
    """Whether a checker for the scenes of ``ds`` is trained for other handwriting styles: for
    scenes of synthetic digits, not for real MNIST (``$PYRO_SCENES_MNIST``) or other sources."""
    from datasets.digits import SyntheticDigits
    return isinstance(getattr(ds, "digit_source", None), SyntheticDigits)


def _training_data(family: str, num_scenes: int, image_size: Optional[int], dataset_options: Dict, seed: int):
    """Images (uint8), centres, labels, valid, extras of generated training scenes."""
    ds = _training_dataset(family, num_scenes, image_size, dataset_options, seed)
    b = ds.generate(range(num_scenes))
    scale = WORK_SIZE[family] / ds.image_size
    if family == "mnist":
        boxes = b["boxes"]
        centres = torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], -1)
        centres = centres * scale
        images, labels, valid, extras = b["image"], b["labels"], b["valid"], None
    else:
        arrow_c = (b["arrow_tail"] + b["arrow_tip"]) / 2
        d = b["arrow_tip"] - b["arrow_tail"]
        d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        centres = torch.cat([b["centers"], arrow_c[:, None]], 1) * scale
        labels = torch.cat([b["labels"], torch.full((num_scenes, 1), rules.ARROW_CLASS)], 1)
        valid = torch.cat([b["valid"], torch.ones(num_scenes, 1, dtype=torch.bool)], 1)
        extras = torch.zeros(num_scenes, 4, 2)
        extras[:, 3] = d
        images = b["image"]
    images = _resize(images, WORK_SIZE[family])
    return (images * 255).round().to(torch.uint8), centres, labels, valid, extras, ds


class StructureChecker:
    """Detect objects and check a dataset's structure rule on images alone."""

    def __init__(self, dataset: str, net: CropNet, image_size: int, info: Optional[Dict] = None,
                 decode_options: Optional[Dict] = None) -> None:
        self.dataset = dataset
        self.family = _family(dataset)
        self.net = net.eval()
        self.image_size = int(image_size)
        self.scale = WORK_SIZE[self.family] / self.image_size
        self.info = info or {}
        self.decode_options = dict(DECODE[self.family], **(decode_options or {}))

    # -- construction -------------------------------------------------------------------
    @staticmethod
    def cache_path(dataset: str, settings: TrainSettings, image_size: int, dataset_config: Dict,
                   cache=None) -> Path:
        family = _family(dataset)
        key = json.dumps(dict(family=family, version=CHECKER_VERSION, settings=settings.key(), image_size=image_size,
                              work_size=WORK_SIZE[family],
                              data=dataset_config), sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return cache_dir(cache) / "checkers" / f"{family}-v{CHECKER_VERSION}-{image_size}px-{digest}.pt"

    @classmethod
    def load(cls, dataset: str, cache=None, settings: Optional[TrainSettings] = None, image_size: Optional[int] = None,
             retrain: bool = False, progress: bool = False, dataset_options: Optional[Dict] = None) -> "StructureChecker":
        """The cached checker for ``dataset``, trained (and cached) first when missing or unreadable."""
        settings = settings or TrainSettings()
        family = _family(dataset)
        dataset_options = dict(dataset_options or {})
        data_cfg = cls._data_config(family, image_size, dataset_options)
        size = data_cfg.get("image_size", image_size or 128)
        path = cls.cache_path(dataset, settings, size, data_cfg, cache)
        if path.is_file() and not retrain:
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                net = CropNet(**blob["hparams"])
                net.load_state_dict(blob["state"])
                return cls(dataset, net, blob["image_size"], dict(blob.get("info", {}), cache_path=str(path)))
            except Exception as e:  # corrupt or stale cache: retrain
                log.warning("cached structure checker %s unreadable (%s); retraining", path, e)
        checker = cls.train(dataset, settings, image_size, progress=progress, dataset_options=dataset_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(dict(hparams=checker.net.hparams(), state=checker.net.state_dict(), image_size=checker.image_size,
                        info=checker.info), tmp)
        os.replace(tmp, path)
        checker.info["cache_path"] = str(path)
        return checker

    @staticmethod
    def _data_config(family: str, image_size: Optional[int], dataset_options: Dict) -> Dict:
        ds = _training_dataset(family, 1, image_size, dataset_options)
        cfg = dict(ds.config())
        cfg.pop("seed", None)
        cfg["image_size"] = ds.image_size
        cfg["class"] = type(ds).__name__
        return cfg

    @classmethod
    def train(cls, dataset: str, settings: Optional[TrainSettings] = None, image_size: Optional[int] = None,
              progress: bool = False, dataset_options: Optional[Dict] = None) -> "StructureChecker":
        """Train a checker's detector on freshly generated training scenes (no caching)."""
        settings = settings or TrainSettings()
        family = _family(dataset)
        t0 = time.time()
        images, centres, labels, valid, extras, ds = _training_data(
            family, settings.num_scenes, image_size, dict(dataset_options or {}), settings.seed)
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, settings.threads))
        try:
            net = train_cropnet(images, centres, labels, valid, 10 if family == "mnist" else 4, extras,
                                steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
                                width=settings.width, seed=settings.seed, use_augment=settings.augment,
                                pad_mode="constant" if family == "mnist" else "replicate",
                                time_limit=settings.time_limit, progress=progress,
                                style=settings.augment and style_training(ds))
        finally:
            torch.set_num_threads(threads)
        info = dict(version=CHECKER_VERSION, settings=asdict(settings), train_seconds=round(time.time() - t0, 1),
                    dataset=ds.config())
        return cls(dataset, net, ds.image_size, info)

    # -- use ----------------------------------------------------------------------------
    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images, dtype=torch.float32).detach().cpu()
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[1] != self.net.in_channels:
            raise ValueError(f"the {self.dataset} checker needs images (B, {self.net.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        return _resize(x.clamp(0, 1), WORK_SIZE[self.family])

    @torch.no_grad()
    def detect(self, images: torch.Tensor, batch_size: int = 64) -> List[Detections]:
        """Detections per image, positions in pixels of the checker's image size (inputs of
        another size are resized)."""
        x = self._prepare(images)
        out: List[Detections] = []
        pad = "constant" if self.family == "mnist" else "replicate"
        for s in range(0, len(x), batch_size):
            logits, off, ext = self.net.dense(x[s:s + batch_size], pad_mode=pad)
            out += [d.scaled(1 / self.scale) for d in decode(logits, off, ext, **self.decode_options)]
        return out

    def rule(self, det: Detections):
        size = self.image_size
        if self.dataset == "mnist4":
            return rules.rule_mnist4(det.centres, det.labels, size)
        if self.dataset == "mnist10":
            return rules.rule_mnist10(det.centres, det.labels, size)
        if self.dataset == "mnist4-10":
            return rules.rule_mnist4_10(det.centres, det.labels, size)
        return rules.rule_arrow(det.centres, det.labels, det.extras, size)

    def check(self, images: torch.Tensor, batch_size: int = 64, progress: bool = False) -> StructureResult:
        """Judge each image: ``valid`` (B,) bool and the reason for each rejection."""
        dets: List[Detections] = []
        n = len(images)
        rng = range(0, n, 256)
        if progress:
            from tqdm import tqdm
            rng = tqdm(rng, desc=f"S-Acc {self.dataset}", leave=False)
        for s in rng:
            dets += self.detect(images[s:s + 256], batch_size)
        verdicts = [self.rule(d) for d in dets]
        return StructureResult(torch.tensor([v[0] for v in verdicts], dtype=torch.bool), [v[1] for v in verdicts], dets)

    def accuracy(self, images: torch.Tensor) -> float:
        """S-Acc: the fraction of images that obey the rule."""
        return self.check(images).accuracy


def structure_accuracy(images: torch.Tensor, dataset: str, checker: Optional[StructureChecker] = None,
                       **load_kw) -> Dict:
    """S-Acc of ``images`` for ``dataset`` (loads or trains the cached checker when not given)."""
    checker = checker or StructureChecker.load(dataset, **load_kw)
    return checker.check(images).summary()


# ---------------------------------------------------------------------------------------------
# report: accuracy on real scenes and rejection of broken ones

def report(dataset: str, num_scenes: int = 500, split: str = "test", checker: Optional[StructureChecker] = None,
           seed: int = 0, progress: bool = True, dataset_options: Optional[Dict] = None, **load_kw) -> Dict:
    """Accuracy on ``num_scenes`` real scenes, on re-rendered unmodified scenes ("control") and
    the rejection rate of each kind of broken scene (``num_scenes`` each)."""
    from datasets import make_dataset

    from .broken import applicable, corrupt, corruption_kinds

    dataset_options = dict(dataset_options or {})
    checker = checker or StructureChecker.load(dataset, progress=progress, dataset_options=dataset_options, **load_kw)
    ds = make_dataset(dataset, split, num_scenes=num_scenes, image_size=checker.image_size, **dataset_options)
    batch = ds.generate(range(num_scenes))
    out = dict(dataset=dataset, split=split, num_scenes=num_scenes, checker=checker.info)
    real = checker.check(batch["image"], progress=progress)
    out["real"] = real.summary()
    kinds = ("control",) + corruption_kinds(dataset)
    out["broken"] = {}
    gen = torch.Generator().manual_seed(seed)
    for kind in kinds:
        images = corrupt(ds, batch, kind, gen)
        res = checker.check(images, progress=progress)
        if kind == "control":
            out["control"] = res.summary()
        else:
            app = applicable(batch, kind)
            n = int(app.sum())
            accepted = int((res.valid & app).sum())
            out["broken"][kind] = dict(rejection=1 - accepted / n if n else float("nan"), accepted=accepted,
                                       num_images=n)
    rej = [v["rejection"] for v in out["broken"].values() if v["num_images"]]
    out["rejection_mean"] = sum(rej) / len(rej)
    out["rejection_min"] = min(rej)
    return out


def _print_report(r: Dict) -> None:
    print(f"S-Acc checker for {r['dataset']} ({r['num_scenes']} {r['split']} scenes per row)")
    print(f"  accuracy on real scenes        {r['real']['accuracy']:.4f}   {r['real']['reasons'] or ''}")
    print(f"  accuracy on re-rendered scenes {r['control']['accuracy']:.4f}   {r['control']['reasons'] or ''}")
    for kind, v in r["broken"].items():
        print(f"  rejection of {kind:<18} {v['rejection']:.4f}   ({v['accepted']} of {v['num_images']} accepted)")
    print(f"  mean rejection {r['rejection_mean']:.4f}, min {r['rejection_min']:.4f}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    import click

    @click.command(help="Train (once, cached) and measure the S-Acc structure checker of a dataset.",
                   context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--dataset", required=True, type=click.Choice(sorted(FAMILIES)), help="dataset whose checker to train")
    @click.option("--report/--no-report", "do_report", default=True, help="measure accuracy and rejection rates")
    @click.option("--num-scenes", default=500, show_default=True, help="scenes per row of the report")
    @click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]),
                  help="split of the report's scenes")
    @click.option("--retrain", is_flag=True, help="retrain even when a cached checker exists")
    @click.option("--cache", default=None, help=f"cache folder (default ${CACHE_ENV} or ~/.cache/pyro_scenes)")
    @click.option("--steps", default=None, type=int, help="training steps (changes the cache key)")
    @click.option("--train-scenes", default=None, type=int, help="training scenes (changes the cache key)")
    @click.option("--image-size", default=128, show_default=True, help="image size the checker judges (64 for the CPU GNM)")
    @click.option("--mnist-path", default=None, help="MNIST IDX folder for the digit datasets")
    @click.option("--out", default=None, type=click.Path(dir_okay=False), help="write the report as JSON")
    def cli(dataset, do_report, num_scenes, split, retrain, cache, steps, train_scenes, image_size, mnist_path, out):
        settings = TrainSettings()
        if steps is not None:
            settings.steps = steps
        if train_scenes is not None:
            settings.num_scenes = train_scenes
        opts = {"mnist_path": mnist_path} if mnist_path and FAMILIES[dataset] == "mnist" else {}
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        checker = StructureChecker.load(dataset, cache=cache, settings=settings, image_size=image_size, retrain=retrain,
                                        progress=True, dataset_options=opts)
        click.echo(f"checker: {checker.info.get('cache_path', '(cached)')} "
                   f"(trained in {checker.info.get('train_seconds', '?')} s)")
        if not do_report:
            return
        r = report(dataset, num_scenes=num_scenes, split=split, checker=checker, dataset_options=opts)
        _print_report(r)
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(r, indent=2, default=str))
            click.echo(f"wrote {out}")

    cli.main(args=list(argv) if argv is not None else None, prog_name="python -m inference.metrics.structure",
             standalone_mode=True)


if __name__ == "__main__":
    main()
