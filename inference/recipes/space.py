"""SPACE on the multi-digit and Arrow scenes: config, data, loss (with its handlers), LL and figures.

The training loss is SPACE's negative ELBO (Lin et al. 2020, eqs. (5)-(8); docs/space.md), per
image and averaged over the batch::

    loss = -E_q[log PixelMixture(x; alpha, fg, (1 - alpha) m_k, mu_k)]
           + sum_cells [ KL(q_pres || Ber(rho(step)))
                         + z_pres * (KL(q_where || N(mu, sd)) + KL(q_depth || N(0,1)) + KL(q_what || N(0,1))) ]
           + sum_k [ KL(q(z^m_k) || p(z^m_k | z^m_<k)) + KL(q(z^c_k) || p(z^c_k | z^m_k)) ]

computed by ``TraceMeanField_ELBO().differentiable_loss`` (the z_pres weights are the model's
``poutine.scale``) under :class:`~inference.handlers.prior.BernoulliPrior` (the z_pres prior
rho, model), :class:`~inference.handlers.temperature.RelaxationTemperature` (model and guide)
and :class:`~inference.handlers.curriculum.FixedMaskCurriculum` (model; alpha fixed at 1 for
the first 1,000 steps on the digit datasets, 0.9 on Arrow).
GNM's datasets, splits, metrics (box AP, count accuracy, the z_what probe) and optimiser are
used as they are, so Table 2 compares the two models on equal terms.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from datasets.cache import default_cache_dir
from inference.recipes.base import Recipe
from inference.recipes.settings import RecipeSettings, defaults, setting
from pyro_scenes.space.config import PRESETS, preset


@dataclass(kw_only=True)
class SPACESettings(RecipeSettings):
    """SPACE's settings (``--set`` names)."""

    preset: str = setting("cpu", choices=tuple(PRESETS))
    num_components: int = setting(3, ge=1)
    z_what_dim: int = setting(20, ge=1)
    num_val: int = setting(6_000, ge=1)
    cache_dir: Optional[str] = setting(factory=lambda: str(default_cache_dir()))
    grad_clip: float = setting(1.0, gt=0)
    #: the fixed z_pres prior: rho_start -> rho_end over steps 0..rho_steps
    rho_start: float = setting(0.1, gt=0, lt=1)
    rho_end: float = setting(0.01, gt=0, lt=1)
    rho_steps: int = setting(4_000, ge=1)
    #: z_pres Concrete temperature: tau_start -> tau_end over steps 0..tau_steps
    tau_start: float = setting(2.5, gt=0)
    tau_end: float = setting(0.5, ge=0)
    tau_steps: int = setting(5_000, ge=1)
    #: fixed prior of the raw z_where (GNM's auxiliary prior)
    where_mean: List[float] = setting([-1.6, 0.0, 0.0, 0.0], length=4)
    where_std: List[float] = setting([0.1, 0.3, 1.0, 1.0], length=4, gt=0)
    #: pixel stds of the foreground and background components of p(x | z)
    fg_sigma: float = setting(0.15, gt=0)
    bg_sigma: float = setting(0.15, gt=0)
    #: fixed-mask curriculum (GNM supplement section 3): for the first curriculum_steps the alpha
    #: map is curriculum_alpha everywhere (1: the foreground alone explains the digit scenes; Arrow
    #: 0.9, GNM's), so the foreground starts before the background can take the objects
    #: (docs/space.md, "Training")
    curriculum: bool = setting(True)
    curriculum_steps: int = setting(1_000, ge=0)
    curriculum_alpha: float = setting(1.0, gt=0)
    curriculum_pres_max: float = setting(0.99, gt=0)
    ll_particles: int = setting(100, ge=1)


#: how the Arrow scenes' defaults differ
ARROW = dict(preset="arrow-cpu", z_what_dim=32, where_mean=[-1.5, 0.0, 0.0, 0.0], curriculum_alpha=0.9)


class SPACERecipe(Recipe):
    """``python -m inference.svi --model space --dataset mnist4`` (see docs/space.md)."""

    name = "space"
    datasets = ("mnist4", "mnist10", "mnist4-10", "arrow")
    metrics = ("box-ap", "count-accuracy", "representation", "ll")
    settings = SPACESettings

    def default_config(self, dataset: str) -> Dict:
        arrow = ARROW if dataset == "arrow" else {}
        return dict(defaults(SPACESettings, lr=1e-4, image_size=64, num_train=60_000, **arrow), dataset=dataset)

    def model_config(self, config: Dict):
        """The :class:`~pyro_scenes.space.SPACEConfig` of ``config``."""
        fg = PRESETS[config["preset"]].fg.replace(z_what_dim=config["z_what_dim"])
        return preset(config["preset"], fg=fg, num_components=config["num_components"], pres_prior=config["rho_end"],
                      where_loc=tuple(config["where_mean"]), where_scale=tuple(config["where_std"]),
                      fg_sigma=config["fg_sigma"], bg_sigma=config["bg_sigma"])

    def validate_config(self, config: Dict) -> None:
        super().validate_config(config)
        built = PRESETS[config["preset"]]
        if config["image_size"] != built.image_size:
            raise ValueError(f"image_size={config['image_size']} but preset {config['preset']!r} is built for "
                             f"{built.image_size}x{built.image_size} images")
        want = 3 if config["dataset"] == "arrow" else 1
        if built.channels != want:
            raise ValueError(f"preset {config['preset']!r} has {built.channels} channel(s) but dataset "
                             f"{config['dataset']!r} has {want}")
        if config["curriculum_alpha"] > 1:
            raise ValueError(f"curriculum_alpha={config['curriculum_alpha']}: an alpha map must be <= 1")
        self.model_config(config)

    def build(self, config: Dict, device: torch.device):
        from guides import SPACEGuide
        from pyro_scenes import SPACE

        model = SPACE(self.model_config(config)).to(device)
        return model, SPACEGuide(model).to(device)

    def make_dataset(self, config: Dict, split: str):
        from inference.recipes.gnm import GNMRecipe

        return GNMRecipe().make_dataset(config, split)  # the same scenes, splits and cache

    def make_optimizer(self, params, config: Dict) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(params, lr=config["lr"])

    def grad_clip_norm(self, config: Dict):
        return float(config["grad_clip"])

    # ------------------------------------------------------------------ loss
    def schedules(self, config: Dict) -> Dict:
        from inference.schedules import Linear

        return {"rho": Linear(config["rho_start"], config["rho_end"], 0, config["rho_steps"]),
                "tau": Linear(config["tau_start"], config["tau_end"], 0, config["tau_steps"])}

    def handlers(self, step: int, config: Dict) -> Tuple:
        """``(model handler, guide handler)`` at ``step``: the z_pres prior and temperature, and
        the fixed-mask curriculum (model)."""
        from inference.handlers.curriculum import FixedMaskCurriculum
        from inference.handlers.prior import BernoulliPrior
        from inference.handlers.temperature import RelaxationTemperature

        s = self.schedules(config)
        tau = RelaxationTemperature(s["tau"], step=step, pattern="z_pres")
        prior = BernoulliPrior(s["rho"], step=step, pattern="z_pres")
        end = config["curriculum_steps"] if config["curriculum"] else 0
        curriculum = FixedMaskCurriculum(step=step, begin=0, end=end, alpha=config["curriculum_alpha"],
                                         pres_max=config["curriculum_pres_max"])
        return (lambda fn: curriculum(tau(prior(fn)))), tau

    def loss(self, model, guide, images, step, config):
        from pyro.infer import TraceMeanField_ELBO

        on_model, on_guide = self.handlers(step, config)
        loss = TraceMeanField_ELBO(max_plate_nesting=2).differentiable_loss(on_model(model), on_guide(guide), images)
        s = self.schedules(config)
        return loss / images.shape[0], {"rho": s["rho"](step), "tau": s["tau"](step)}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validation_metrics(self, model, guide, dataset, step, config) -> Dict:
        """Box AP@0.5, count accuracy and the z_what probe on the first ``val_items`` validation
        scenes (the protocols of GNM's, docs/metrics.md)."""
        from inference.evaluation import gnm as evaluation

        n = min(config["val_items"], len(dataset))
        found = evaluation.infer_scenes(guide, dataset, n, config["batch_size"], next(model.parameters()).device)
        res = evaluation.detection_results(found, ("box-ap", "count-accuracy", "representation"))
        return {k: res[k] for k in ("box-ap@0.5", "count-accuracy", "representation")}

    def evaluate(self, model, guide, dataset, config, metrics, options) -> Dict:
        from inference.evaluation.gnm import evaluate_gnm

        out = super().evaluate(model, guide, dataset, config, metrics, options)
        found = evaluate_gnm(model, guide, dataset, config["dataset"], [m for m in metrics if m != "ll"], options.num_samples,
                             options.batch_size, options.device, options.progress, options.metric_options)
        out["results"].update(found.pop("results"))
        return {**out, **found}

    def evaluation_plots(self, evaluation, prefix: Path) -> List[Path]:
        from inference.evaluation.gnm import gnm_plots

        return gnm_plots(evaluation, prefix) + super().evaluation_plots(evaluation, prefix)

    def log_likelihood(self, model, guide, images, config, num_particles=100, batch_particles=10):
        """Importance-weighted log p(x) per image (nats), z_pres drawn hard (Bernoulli) and scored
        by its Bernoulli mass, as GNM's (:meth:`GNMRecipe.log_likelihood`)."""
        from inference.handlers.temperature import RelaxationTemperature
        from inference.likelihood import importance_log_likelihood

        with RelaxationTemperature(0.0):
            return importance_log_likelihood(model, guide, images, num_particles=num_particles, batch_particles=batch_particles,
                                             max_plate_nesting=2)

    def figures(self, model, guide, batch, out_dir: Path, step: int) -> List[Path]:
        from inference.figures.space import space_figures

        images = batch["image"] if isinstance(batch, dict) else batch
        return space_figures(model, guide, images[:8], Path(out_dir), prefix="space_")
