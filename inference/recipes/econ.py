"""ECON on the sprites (ECON appendix C): config, data, loss and figures for the trainer."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from datasets.cache import default_cache_dir
from inference.recipes.base import Recipe
from inference.recipes.settings import RecipeSettings, defaults, setting

#: Appendix C.4's best models: latent size, beta, gamma, layers and features. lambda: the paper
#: competes on L_x + L_r for unique colours (lambda = 1) and on L_r alone for random colours
#: (lambda = 0). sigma_x = 0.1 (the MONet range; the paper leaves it open).
PAPER_SETTINGS = {
    "sprites-unique": dict(latent_dim=2, layers=4, features=32, beta=9.54, gamma=0.52, lam=1.0),
    "sprites-random": dict(latent_dim=5, layers=3, features=32, beta=1.0, gamma=3.26, lam=0.0),
}
#: the competition each dataset defaults to (docs/econ.md): per-pixel scores on unique colours
#: (experts specialise in 1,000 steps, the literal sums never); the paper's literal sums on random
#: colours, the only competition measured to decompose them (`econ-sprites-random`)
PER_PIXEL_COMPETITION = {"sprites-unique": True, "sprites-random": False}


@dataclass(kw_only=True)
class ECONSettings(RecipeSettings):
    """ECON's settings (``--set`` names); :meth:`ECONRecipe.default_config` gives the dataset's.

    The CPU default keeps the paper's objective, K, T, latent size, beta, gamma and optimiser but
    shrinks the networks and images so a laptop CPU trains it: 32x32 images (the paper leaves the
    size open), 16 features, 3 conv blocks, a 3-block U-Net with 8 filters. ``--set`` restores the
    paper's networks (``decoder_features=32 encoder_features=32 attention_filters=32
    attention_blocks=4 decoder_layers=4 encoder_layers=4``, 64x64 with ``--image-size 64``).
    """

    num_val: int = setting(100, ge=1)
    cache_dir: Optional[str] = setting(factory=lambda: str(default_cache_dir()))  # "" or null: no cache
    #: objects per scene; more than 3 repeats classes (evaluate with num_layers >= num_objects + 1)
    num_objects: int = setting(3, ge=1)
    num_experts: int = setting(4, ge=1)
    num_layers: int = setting(4, ge=1)
    latent_dim: int = setting(ge=1)
    sigma_x: float = setting(0.1, gt=0)
    decoder_features: int = setting(16, ge=1)
    decoder_layers: int = setting(3, ge=1)
    encoder_features: int = setting(16, ge=1)
    encoder_layers: int = setting(3, ge=1)
    attention_filters: int = setting(8, ge=1)
    attention_blocks: int = setting(3, ge=1)
    beta: float = setting(ge=0)
    gamma: float = setting(ge=0)
    lam: float = setting(ge=0)
    greedy: bool = setting(False)
    #: the competition (docs/econ.md): experts scored per pixel of their regions (this project's
    #: choice, measured there; the default on unique colours, PER_PIXEL_COMPETITION) or summed, as
    #: the paper, with the literal exp(-score) draw; the temperature goes
    #: geometrically from ``temperature`` to ``temperature_final`` over ``temperature_steps``
    competition_per_pixel: bool = setting(True)
    temperature: float = setting(1.0, gt=0)
    temperature_final: float = setting(1.0, gt=0)
    temperature_steps: int = setting(0, ge=0)
    #: generative MONet (section 5.1, Figure 5): train on the dataset's visible regions (the model's
    #: r_t conditioned on them, the guide given them); needs num_layers = num_objects + 1
    given_regions: bool = setting(False)
    plateau_patience: int = setting(5, ge=1)
    plateau_factor: float = setting(1 / math.sqrt(10), gt=0, lt=1)


class ECONRecipe(Recipe):
    name = "econ"
    datasets = ("sprites-unique", "sprites-random")
    metrics = ("ari", "fg-ari", "msc", "specialisation", "shape-iou")
    #: runs saved before the per-pixel competition became the default were scored summed
    legacy_defaults = dict(competition_per_pixel=False)
    settings = ECONSettings

    def default_config(self, dataset: str) -> Dict:
        paper = {k: PAPER_SETTINGS[dataset][k] for k in ("latent_dim", "beta", "gamma", "lam")}
        return dict(defaults(ECONSettings, lr=5e-4, image_size=32, num_train=50_000, **paper,
                             competition_per_pixel=PER_PIXEL_COMPETITION[dataset]), dataset=dataset,
                    steps=3000, val_every=100, val_items=100)  # appendix C.3: validation loss every 100 iterations (100 scenes)

    def validate_config(self, config: Dict) -> None:
        super().validate_config(config)
        size = config["image_size"]
        if size % 2 ** config["encoder_layers"] or size % 2 ** (config["attention_blocks"] - 1):
            raise ValueError(f"image_size {size} must be divisible by 2**encoder_layers and 2**(attention_blocks - 1)")
        if config["given_regions"] and config["num_layers"] != config["num_objects"] + 1:
            raise ValueError(f"given_regions: num_layers ({config['num_layers']}) must be num_objects + 1 "
                             f"({config['num_objects'] + 1}), one layer per object and one for the background")

    def build(self, config: Dict, device: torch.device):
        from guides import ECONGuide
        from pyro_scenes import ECON

        model = ECON(num_experts=config["num_experts"], num_layers=config["num_layers"], latent_dim=config["latent_dim"],
                     image_size=config["image_size"], channels=3, decoder_features=config["decoder_features"],
                     decoder_layers=config["decoder_layers"], sigma_x=config["sigma_x"]).to(device)
        guide = ECONGuide(model, attention_filters=config["attention_filters"], attention_blocks=config["attention_blocks"],
                          encoder_features=config["encoder_features"], encoder_layers=config["encoder_layers"],
                          competition_lambda=config["lam"],
                          competition_per_pixel=config["competition_per_pixel"]).to(device)
        return model, guide

    def make_dataset(self, config: Dict, split: str):
        from datasets import make_dataset
        from datasets.cache import cached

        size = {"train": config["num_train"], "val": config["num_val"], "test": max(config["num_val"], 1000)}[split]
        objects = config["num_objects"]
        ds = make_dataset(config["dataset"], split=split, num_scenes=size, image_size=config["image_size"], seed=config["seed"],
                          num_objects=objects, allow_repeats=objects > 3)
        return cached(ds, Path(config["cache_dir"]) / "datasets") if config.get("cache_dir") else ds

    def make_optimizer(self, params, config: Dict) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=config["lr"])  # appendix C.3

    def make_scheduler(self, optimizer, config: Dict):
        # appendix C.3: validation every 100 steps, LR / sqrt(10) after 5 evaluations without improvement
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=config["plateau_factor"], patience=config["plateau_patience"])

    def batch_keys(self, config: Dict):
        return ("image", "visible_masks") if config["given_regions"] else ("image",)

    def loss(self, model, guide, batch, step, config):
        from inference.objectives import econ_loss

        temperature = self.temperature(step, config)
        from inference.decompose import regions_from_masks

        images, regions = (batch["image"], regions_from_masks(batch["visible_masks"])) if isinstance(batch, dict) else (batch, None)
        loss = econ_loss(model, guide, images, beta=config["beta"], gamma=config["gamma"], greedy=config["greedy"],
                         temperature=temperature, regions=regions)
        return loss, {"temperature": temperature}

    @staticmethod
    def temperature(step: int, config: Dict) -> float:
        """The competition temperature at ``step`` (geometric annealing)."""
        from inference.schedules import Geometric

        return Geometric(config["temperature"], config["temperature_final"], 0, config["temperature_steps"])(step)

    def validation_metrics(self, model, guide, dataset, step, config) -> Dict:
        """FG-ARI, specialisation, shape IoU and each expert's share of wins per layer (greedy
        decomposition of ``val_items`` scenes), and each expert's gradient norm on one batch."""
        from inference.evaluation.econ import evaluate_econ

        res = evaluate_econ(model, guide, dataset, metrics=("fg-ari", "specialisation", "shape-iou"), num_samples=config["val_items"],
                            batch_size=config["batch_size"], progress=False, given_regions=config["given_regions"])["results"]
        out = {"fg-ari": res["fg-ari"], "specialisation": res["specialisation"],
               "specialisation_with_background": res["specialisation_with_background"],
               "experts_distinct": float(res["experts_distinct"]), "shape-iou": res["shape-iou"],
               # classes (circle, square, triangle, background) -> their most frequent expert
               "best_expert_per_class": [float(v) for v in res["best_expert_per_class"].values()]}
        for t, share in enumerate(res["win_share"], start=1):
            out[f"win_share_t{t}"] = share
        out.update(self.expert_gradient_norms(model, guide, dataset, step, config))
        return out

    def expert_gradient_norms(self, model, guide, dataset, step, config) -> Dict:
        """Each expert's gradient norm (attention, encoder, decoder) of the training loss on one
        held-out batch: an expert that never wins shows 0 and is not learning."""
        from inference.evaluation.data import scenes

        items = scenes(dataset, 0, min(config["batch_size"], len(dataset)))
        device = next(model.parameters()).device
        keys = self.batch_keys(config)
        batch = items["image"].to(device) if keys == ("image",) else {k: items[k].to(device) for k in keys}
        params = [p for m in (model, guide) for p in m.parameters()]
        saved = [p.grad for p in params]
        for p in params:
            p.grad = None
        try:
            with torch.enable_grad():
                self.loss(model, guide, batch, step, config)[0].backward()
            out = {}
            for name, net in (("attention", guide.attention), ("encoder", guide.encoder), ("decoder", model.decoder)):
                sq = sum(p.grad.pow(2).flatten(1).sum(1) for p in net.parameters() if p.grad is not None)
                out[f"grad_norm_{name}"] = (sq.sqrt().tolist() if torch.is_tensor(sq) else [0.0] * model.num_experts)
            return out
        finally:
            for p, g in zip(params, saved):
                p.grad = g

    def evaluate(self, model, guide, dataset, config, metrics, options) -> Dict:
        """The ECON metrics (:func:`~inference.evaluation.econ.evaluate_econ`)."""
        from inference.evaluation.econ import evaluate_econ

        return evaluate_econ(model, guide, dataset, metrics, options.num_samples, options.batch_size, options.device, options.progress,
                             given_regions=config["given_regions"])

    def evaluation_plots(self, evaluation, prefix: Path) -> List[Path]:
        from inference.evaluation.econ import econ_plots

        return econ_plots(evaluation, prefix)

    def figures(self, model, guide, batch, out_dir: Path, step: int) -> List[Path]:
        from inference.figures.econ import econ_figures

        images = batch["image"] if isinstance(batch, dict) else batch
        return econ_figures(model, guide, images[:8], Path(out_dir))
