"""What GNM's generation baselines share (GNM supplement section 4.2; docs/baselines.md): the
beta-ELBO, GNM's datasets and splits, and GNM's generation metrics.

The training loss of every baseline is the negative beta-ELBO, per image and averaged over the
batch::

    loss = -E_q[log p(x | z)] + beta * sum_latents KL(q(z | x) || p(z | ...))

computed by ``TraceMeanField_ELBO().differentiable_loss`` under
:class:`~inference.handlers.scale.ScaleSites` (every latent site, matched by
:attr:`BaselineRecipe.latent_sites`, weighted by ``beta`` in model and guide; ``x`` is not
matched). beta = 1 is the ELBO; ConvDRAW-beta-10 and GENESIS (beta 10 on the digits, 15 on
Arrow) are the supplement's beta variants.

Evaluation is GNM's protocol for generations (docs/metrics.md): S-Acc and D-Steps of
``model.sample(n)`` and the importance-weighted ``log p(x)``, so Table 1 compares every model on
the same held-out scenes in the same way.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from datasets.cache import default_cache_dir
from inference.recipes.base import Recipe
from inference.recipes.settings import RecipeSettings, defaults, setting


@dataclass(kw_only=True)
class BaselineSettings(RecipeSettings):
    """The settings every baseline has (``--set`` names); a baseline adds its own."""

    #: KL weight of the beta-ELBO (1: the ELBO)
    beta: float = setting(1.0, gt=0)
    #: KL warm-up: beta rises linearly from 0 to ``beta`` over the first ``beta_warmup`` steps (0:
    #: none, the supplement's recipe; docs/baselines.md, "KL warm-up")
    beta_warmup: int = setting(0, ge=0)
    num_val: int = setting(6_000, ge=1)
    cache_dir: Optional[str] = setting(factory=lambda: str(default_cache_dir()))  # "" or null: no cache
    grad_clip: float = setting(1.0, gt=0)
    ll_particles: int = setting(100, ge=1)


class BaselineRecipe(Recipe):
    """Base of the VAE, ConvDRAW and GENESIS recipes: subclasses give ``name``, ``settings``,
    the model's class name and config module, and the settings that reach its preset."""

    datasets = ("mnist4", "mnist10", "mnist4-10", "arrow")
    metrics = ("s-acc", "d-steps", "ll")
    #: shell glob of the latent sites that beta weighs
    latent_sites: str = "z*"
    #: the model class in ``pyro_scenes`` (its guide is ``guides.<model_class>Guide``) and the
    #: module whose ``preset(name, **overrides)`` builds its configuration
    model_class: str = ""
    config_module: str = ""
    #: the settings passed to ``preset`` as overrides
    preset_settings: Tuple[str, ...] = ()
    #: the default learning rate, and the defaults that differ on ``--dataset arrow``
    default_lr: float = 1e-4
    arrow_defaults: Dict = {"preset": "arrow-cpu"}

    def default_config(self, dataset: str) -> Dict:
        arrow = self.arrow_defaults if dataset == "arrow" else {}
        return dict(defaults(self.settings, lr=self.default_lr, image_size=64, num_train=60_000, **arrow), dataset=dataset)

    def model_config(self, config: Dict):
        """The model's configuration dataclass for the run ``config``: its ``preset`` with
        :attr:`preset_settings` as overrides."""
        preset = importlib.import_module(self.config_module).preset
        return preset(config["preset"], **{key: config[key] for key in self.preset_settings})

    def build(self, config: Dict, device: torch.device):
        import guides
        import pyro_scenes

        model = getattr(pyro_scenes, self.model_class)(self.model_config(config)).to(device)
        return model, getattr(guides, f"{self.model_class}Guide")(model).to(device)

    def validate_config(self, config: Dict) -> None:
        super().validate_config(config)
        built = self.model_config(config)
        if config["image_size"] != built.image_size:
            raise ValueError(f"image_size={config['image_size']} but preset {config['preset']!r} is built for "
                             f"{built.image_size}x{built.image_size} images; set both")
        want = 3 if config["dataset"] == "arrow" else 1
        if built.channels != want:
            raise ValueError(f"preset {config['preset']!r} has {built.channels} channel(s) but dataset "
                             f"{config['dataset']!r} has {want}")
        built.validate()

    def make_dataset(self, config: Dict, split: str):
        from inference.recipes.gnm import GNMRecipe

        return GNMRecipe().make_dataset(config, split)  # GNM's scenes, splits and cache

    def make_optimizer(self, params, config: Dict) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(params, lr=config["lr"])  # GNM's, so the comparison is on equal terms

    def grad_clip_norm(self, config: Dict):
        return float(config["grad_clip"])

    # ------------------------------------------------------------------ loss
    def loss(self, model, guide, images, step, config):
        """The negative beta-ELBO per image and its parts: ``nll`` (-E_q log p(x | z)), ``kl`` (the
        unweighted sum of the latents' KLs), batch means in nats, and ``beta`` at ``step``."""
        from pyro import poutine
        from pyro.infer import TraceMeanField_ELBO
        from pyro.poutine.util import site_is_subsample
        from torch.distributions import kl_divergence

        from inference.handlers.scale import ScaleSites

        weight = self.beta(config)(step)
        beta = ScaleSites({self.latent_sites: weight})
        m, g = poutine.trace(beta(model)), poutine.trace(beta(guide))
        B = images.shape[0]
        loss = TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(m, g, images) / B
        with torch.no_grad():
            nll = -float(m.trace.nodes["x"]["fn"].log_prob(m.trace.nodes["x"]["value"]).sum()) / B
            kl = sum(float(kl_divergence(site["fn"], m.trace.nodes[name]["fn"]).sum()) for name, site in g.trace.nodes.items()
                     if site["type"] == "sample" and not site_is_subsample(site)) / B
        return loss, {"beta": weight, "nll": nll, "kl": kl}

    @staticmethod
    def beta(config: Dict):
        """beta as a schedule ``step -> weight``: ``beta`` throughout, or a linear warm-up from 0
        over ``beta_warmup`` steps."""
        from inference.schedules import Linear

        return Linear(0.0, config["beta"], 0, config["beta_warmup"]) if config["beta_warmup"] else (lambda step: config["beta"])

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model, guide, dataset, config, metrics, options) -> Dict:
        """``ll`` (:meth:`Recipe.evaluate`) and S-Acc and D-Steps of generations
        (:func:`~inference.evaluation.gnm.evaluate_gnm`, GNM's protocol)."""
        from inference.evaluation.gnm import evaluate_gnm

        out = super().evaluate(model, guide, dataset, config, metrics, options)
        generated = [m for m in metrics if m in ("s-acc", "d-steps")]
        if generated:
            found = evaluate_gnm(model, guide, dataset, config["dataset"], generated, options.num_samples, options.batch_size,
                                 options.device, options.progress, options.metric_options)
            out["results"].update(found.pop("results"))
            out.update(found)
        return out

    def evaluation_plots(self, evaluation, prefix: Path) -> List[Path]:
        from inference.evaluation.gnm import gnm_plots

        return gnm_plots(evaluation, prefix) + super().evaluation_plots(evaluation, prefix)

    def figures(self, model, guide, batch, out_dir: Path, step: int) -> List[Path]:
        from inference.figures.baselines import baseline_figures

        images = batch["image"] if isinstance(batch, dict) else batch
        return baseline_figures(model, guide, images[:8], Path(out_dir), prefix=f"{self.name}_")
