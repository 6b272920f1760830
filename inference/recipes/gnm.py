"""GNM on the multi-digit and Arrow scenes: config, data, loss (with its handlers), LL and figures.

The training loss is the authors' objective (Jiang & Ahn 2020, supplement eqs. (1)-(5); docs/gnm.md), per image and
averaged over the batch::

    loss = -E_q[log N(x; render(z), 0.2)]            (x summed over pixels)
           + beta_g(step) * sum_l KL(q(z^g_l) || p(z^g_l | z^g_<l))
           + KL_pres (analytic Bernoulli) + KL_where + KL_depth + KL_what  (vs p(z^s | f), not masked)
           + KL(q(z_bg) || p(z_bg | z^g))                                         (Arrow)
           + aux: KL(q_pres || Ber(rho(step))) + z_pres * [beta_where(step) KL(q_where || N(mu, sd))
                  + KL(q_depth || N(0,1)) + KL(q_what || N(0,1))] + beta_b(step) KL(q_bg || N(0,1))

computed by ``TraceMeanField_ELBO().differentiable_loss`` on the Pyro model and guide under four
handlers: :class:`~inference.handlers.scale.ScaleSites` (``z_g_*`` by beta_g, model AND guide),
:class:`~inference.handlers.temperature.RelaxationTemperature` (z_pres, model and guide),
:class:`~inference.handlers.aux_kl.AuxiliaryKL` (guide) and, for Arrow,
:class:`~inference.handlers.curriculum.FixedMaskCurriculum` (model).

Schedules: ``schedule="authors"`` (default) are the authors' (docs/gnm.md, "Training objective"; beta_g 0 -> 1
over 100k steps); ``schedule="budget"`` (:data:`SCHEDULES`) fits about 20k steps: z^s and the
digits are learned with beta_g = 0, then beta_g ramps, then the z^g prior catches up. The
preset gives the annealing keys left at null; a key set to a number keeps it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from datasets.cache import default_cache_dir
from inference.recipes.base import Recipe
from inference.recipes.settings import RecipeSettings, defaults, setting
from pyro_scenes.gnm.config import PRESETS, preset


#: ``--set schedule=NAME``: the annealing settings each schedule preset gives the keys left at
#: null. ``authors`` are the authors' (supplement section 3; docs/gnm.md); ``budget`` fits about
#: 20,000 steps: beta_g = 0 for steps 0-6k while z^s and the digits are learned (z_pres
#: temperature 1 -> 0.5 by step 6k), beta_g 0 -> beta_g_end over 6k-14k, then 6k steps at
#: beta_g_end for the z^g prior to catch up. A ramp that starts at step 0 and is short collapses
#: z^g (KL_g ~ 0.06 nats, empty generations; issue 9), hence the delayed start. ``short`` is
#: ``budget`` at a tenth of the steps (about 2,000: the baseline comparison, docs/compare.md).
SCHEDULES = {
    "authors": dict(beta_g_begin=0, beta_g_steps=100_000, tau_begin=1_000, tau_finish=20_000, rho_steps=4_000,
                    aux_bg_beta_steps=50_000),
    "budget": dict(beta_g_begin=6_000, beta_g_steps=8_000, tau_begin=1_000, tau_finish=6_000, rho_steps=4_000,
                   aux_bg_beta_steps=10_000),
    "short": dict(beta_g_begin=600, beta_g_steps=800, tau_begin=100, tau_finish=600, rho_steps=400, aux_bg_beta_steps=1_000),
}
#: KL_g (nats per image, all StructDRAW steps) below which z^g counts as collapsed
COLLAPSE_NATS = 0.1


@dataclass(kw_only=True)
class GNMSettings(RecipeSettings):
    """GNM's settings (``--set`` names); :meth:`GNMRecipe.default_config` gives the dataset's."""

    #: architecture: the CPU presets by default (64x64); "mnist"/"arrow" are the authors' 128x128
    preset: str = setting("cpu", choices=tuple(PRESETS))
    draw_steps: int = setting(4, ge=1)  # 8: GNM-8 (supplement Table 1)
    z_what_dim: int = setting(20, ge=1)
    num_val: int = setting(6_000, ge=1)
    cache_dir: Optional[str] = setting(factory=lambda: str(default_cache_dir()))  # "" or null: no cache
    grad_clip: float = setting(1.0, gt=0)
    #: the preset (:data:`SCHEDULES`) of the six annealing keys below that are null
    schedule: str = setting("authors", choices=tuple(SCHEDULES))
    #: beta_g: 0 until beta_g_begin, -> beta_g_end over beta_g_steps (beta_g_end = 2: GNM-beta-2)
    beta_g_end: float = setting(1.0, ge=0)
    beta_g_begin: Optional[int] = setting(None, ge=0)
    beta_g_steps: Optional[int] = setting(None, ge=1)
    #: z_pres Concrete temperature: tau_start -> tau_end over steps tau_begin..tau_finish
    tau_start: float = setting(1.0, gt=0)
    tau_end: float = setting(0.5, ge=0)
    tau_begin: Optional[int] = setting(None, ge=0)
    tau_finish: Optional[int] = setting(None, ge=0)
    #: auxiliary KLs (supplement eqs. (3)-(5))
    rho_start: float = setting(0.1, gt=0, lt=1)
    rho_end: float = setting(0.001, gt=0, lt=1)
    rho_steps: Optional[int] = setting(None, ge=1)
    aux_where_mean: List[float] = setting([-1.6, 0.0, 0.0, 0.0], length=4)
    aux_where_std: List[float] = setting([0.1, 0.3, 1.0, 1.0], length=4, gt=0)
    aux_where_beta_start: float = setting(1.0, ge=0)
    aux_where_beta_steps: int = setting(500, ge=0)
    aux_bg_beta_start: float = setting(50.0, ge=0)
    aux_bg_beta_steps: Optional[int] = setting(None, ge=0)
    aux_gate_min: float = setting(1e-5, ge=0)
    #: fixed-mask curriculum (Arrow)
    curriculum: bool = setting(False)
    curriculum_steps: int = setting(500, ge=0)
    curriculum_alpha: float = setting(0.9, gt=0)
    curriculum_pres_max: float = setting(0.99, gt=0)
    #: evaluation; validation_metrics: layout rate of this many mode generations (0: none)
    ll_particles: int = setting(100, ge=1)
    val_generations: int = setting(100, ge=0)
    #: pixel std of the image likelihood; null: the preset's (0.2). docs/gnm.md, "Why the
    #: digits look alike": at 64 px, 0.1 makes a digit's identity worth 4x more nats
    sigma: Optional[float] = setting(None, gt=0)


#: how the Arrow scenes' defaults differ (RGB with a background, docs/gnm.md)
ARROW = dict(preset="arrow-cpu", z_what_dim=32, aux_where_mean=[-1.5, 0.0, 0.0, 0.0], aux_where_beta_start=10.0,
             curriculum=True)


class GNMRecipe(Recipe):
    """``python -m inference.svi --model gnm --dataset mnist4`` (see docs/gnm.md)."""

    name = "gnm"
    datasets = ("mnist4", "mnist10", "mnist4-10", "arrow")
    metrics = ("box-ap", "count-accuracy", "ll", "s-acc", "s-acc-recon", "d-steps", "representation", "layout")
    #: runs saved before beta_g_begin existed ramped beta_g from step 0
    legacy_defaults = dict(beta_g_begin=0)
    settings = GNMSettings

    # ------------------------------------------------------------------ config
    def default_config(self, dataset: str) -> Dict:
        arrow = ARROW if dataset == "arrow" else {}
        # optimisation: the authors' (docs/gnm.md, "Commands")
        return dict(defaults(GNMSettings, lr=1e-4, image_size=64, num_train=60_000, **arrow), dataset=dataset)

    def complete_config(self, config: Dict) -> Dict:
        """:meth:`Recipe.complete_config`; in a config saved before the annealing keys could be null
        (none of them is), a key at the authors' value followed the ``schedule`` preset: null now."""
        config = super().complete_config(config)
        if all(config[k] is not None for k in SCHEDULES["authors"]):
            config.update({k: None for k, v in SCHEDULES["authors"].items() if config[k] == v})
        return config

    @staticmethod
    def schedule_config(config: Dict) -> Dict:
        """``config`` with the ``schedule`` preset's value for each annealing key that is null."""
        preset = SCHEDULES[config["schedule"]]
        return {**config, **{k: v for k, v in preset.items() if config[k] is None}}

    def model_config(self, config: Dict):
        """The :class:`~pyro_scenes.gnm.GNMConfig` of ``config``: its ``preset`` with ``draw_steps``,
        ``z_what_dim`` and ``sigma`` (when set; the preset's pixel std of p(x | z) otherwise)."""
        overrides = dict(draw_steps=config["draw_steps"], z_what_dim=config["z_what_dim"])
        if config["sigma"] is not None:
            overrides["sigma"] = config["sigma"]
        return preset(config["preset"], **overrides)

    def validate_config(self, config: Dict) -> None:
        super().validate_config(config)
        built_for = PRESETS[config["preset"]]
        if config["image_size"] != built_for.image_size:
            raise ValueError(f"image_size={config['image_size']} but preset {config['preset']!r} is built for "
                             f"{built_for.image_size}x{built_for.image_size} images; set both (e.g. "
                             f"--set preset=mnist --image-size 128)")
        want = 3 if config["dataset"] == "arrow" else 1
        if built_for.channels != want:
            raise ValueError(f"preset {config['preset']!r} has {built_for.channels} channel(s) but dataset "
                             f"{config['dataset']!r} has {want}")
        scheduled = self.schedule_config(config)
        if scheduled["tau_finish"] < scheduled["tau_begin"]:
            raise ValueError(f"tau_finish ({scheduled['tau_finish']}) must be >= tau_begin ({scheduled['tau_begin']})")
        self.model_config(config).validate()

    # ------------------------------------------------------------------ build
    def build(self, config: Dict, device: torch.device):
        from guides import GNMGuide
        from pyro_scenes import GNM

        model = GNM(self.model_config(config)).to(device)
        guide = GNMGuide(model).to(device)
        return model, guide

    def make_dataset(self, config: Dict, split: str):
        from datasets import make_dataset

        size = {"train": config["num_train"], "val": config["num_val"], "test": config["num_val"]}[split]
        ds = make_dataset(config["dataset"], split=split, num_scenes=size, image_size=config["image_size"], seed=config["seed"])
        if config.get("cache_dir"):
            from datasets.cache import cached

            return cached(ds, Path(config["cache_dir"]) / "datasets")
        return ds

    def make_optimizer(self, params, config: Dict) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(params, lr=config["lr"])

    def grad_clip_norm(self, config: Dict):
        return float(config["grad_clip"])

    # ------------------------------------------------------------------ loss
    def schedules(self, config: Dict) -> Dict:
        """Every annealed quantity as a schedule ``step -> value`` (docs/gnm.md, "Training objective"), after the
        ``schedule`` preset (:meth:`schedule_config`). beta_g is 0 until ``beta_g_begin`` (0: the
        authors'), then linear to ``beta_g_end`` at ``beta_g_begin + beta_g_steps``."""
        from inference.schedules import Linear

        config = self.schedule_config(config)
        begin = config["beta_g_begin"]
        return {
            "beta_g": Linear(0.0, config["beta_g_end"], begin, begin + config["beta_g_steps"]),
            "tau": Linear(config["tau_start"], config["tau_end"], config["tau_begin"], config["tau_finish"]),
            "rho": Linear(config["rho_start"], config["rho_end"], 0, config["rho_steps"]),
            "beta_where": Linear(config["aux_where_beta_start"], 1.0, 0, config["aux_where_beta_steps"]),
            "beta_bg": Linear(config["aux_bg_beta_start"], 1.0, 0, config["aux_bg_beta_steps"]),
        }

    def aux_terms(self, config: Dict, model) -> Dict:
        """The auxiliary KL terms of supplement eqs. (3)-(4) against fixed priors, for ``model`` (a GNM)."""
        import pyro.distributions as dist

        from inference.handlers.aux_kl import AuxTerm

        model_cfg = model.cfg
        device = next(model.parameters()).device
        s = self.schedules(config)
        mean = torch.tensor(config["aux_where_mean"], device=device)
        std = torch.tensor(config["aux_where_std"], device=device)
        zero, one = torch.zeros((), device=device), torch.ones((), device=device)
        gate = dict(gate="z_pres", gate_min=config["aux_gate_min"] or None)
        terms = {
            "z_pres": AuxTerm(prior=lambda step: dist.Bernoulli(probs=torch.tensor(s["rho"](step), device=device))),
            "z_where": AuxTerm(prior=lambda step: dist.Normal(mean, std).to_event(1), weight=s["beta_where"], **gate),
            "z_depth": AuxTerm(prior=lambda step: dist.Normal(zero, one).expand([model_cfg.z_depth_dim]).to_event(1), **gate),
            "z_what": AuxTerm(prior=lambda step: dist.Normal(zero, one).expand([model_cfg.z_what_dim]).to_event(1), **gate),
        }
        if model_cfg.background:
            terms["z_bg"] = AuxTerm(prior=lambda step: dist.Normal(zero, one).expand([model_cfg.z_bg_dim]).to_event(1), weight=s["beta_bg"])
        return terms

    def handlers(self, model, guide, step: int, config: Dict) -> Tuple:
        """``(wrapped model, wrapped guide, aux messenger)`` for the loss at ``step``."""
        from inference.handlers.aux_kl import AuxiliaryKL
        from inference.handlers.curriculum import FixedMaskCurriculum
        from inference.handlers.scale import ScaleSites
        from inference.handlers.temperature import RelaxationTemperature

        s = self.schedules(config)
        scale = ScaleSites({"z_g_*": s["beta_g"]}, step=step)
        tau = RelaxationTemperature(s["tau"], step=step, pattern="z_pres")
        aux = AuxiliaryKL(self.aux_terms(config, model), step=step)
        wrapped_model = scale(tau(model))
        if config["curriculum"]:
            wrapped_model = FixedMaskCurriculum(step=step, begin=0, end=config["curriculum_steps"], alpha=config["curriculum_alpha"],
                                                pres_max=config["curriculum_pres_max"])(wrapped_model)
        wrapped_guide = scale(tau(aux(guide)))
        return wrapped_model, wrapped_guide, aux

    def loss(self, model, guide, images, step, config):
        """The training loss and its logs: schedules, auxiliary KLs and ``kl_g_1..L``, the unweighted
        KL(q(z^g_l) || p(z^g_l | z^g_<l)) of each StructDRAW step (batch mean, nats; the loss adds
        beta_g times their sum). Warns once when z^g collapses (:meth:`check_collapse`)."""
        from pyro import poutine
        from pyro.infer import TraceMeanField_ELBO

        m, g, aux = self.handlers(model, guide, step, config)
        m, g = poutine.trace(m), poutine.trace(g)
        B = images.shape[0]
        loss = TraceMeanField_ELBO(max_plate_nesting=2).differentiable_loss(m, g, images) / B
        s = self.schedules(config)
        logs = {"beta_g": s["beta_g"](step), "tau": s["tau"](step), "rho": s["rho"](step)}
        logs.update({f"aux_kl_{k}": v / B for k, v in aux.values.items()})
        kl_g = kl_g_per_step(m.trace, g.trace)
        logs.update({f"kl_g_{l}": v for l, v in enumerate(kl_g, start=1)})
        self.check_collapse(sum(kl_g), logs["beta_g"], step)
        return loss, logs

    _collapse_warned = False

    def check_collapse(self, kl_g: float, beta_g: float, step: int) -> None:
        """Warn (once per recipe instance, i.e. per run) when beta_g > 0 and the total KL_g is below
        :data:`COLLAPSE_NATS`: q(z^g) has fallen onto the prior, z^g carries no layout and
        generations ignore the structure (issue 9: a 1k-step ramp from step 0 did this)."""
        if beta_g > 0 and kl_g < COLLAPSE_NATS and not self._collapse_warned:
            self._collapse_warned = True
            warnings.warn(f"KL of z^g is ~0: the global latent is collapsing (KL_g = {kl_g:.3g} nats at step {step}, "
                          f"beta_g = {beta_g:.3g}); generations will not follow the layout. Start the beta_g ramp "
                          f"later (beta_g_begin) or make it longer (beta_g_steps); see docs/gnm.md", RuntimeWarning,
                          stacklevel=2)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validation_metrics(self, model, guide, dataset, step, config) -> Dict:
        """Learning curves on the first ``val_items`` validation scenes (docs/metrics.md protocols):
        box AP@0.5, count accuracy, the z_what probe (supplement Table 2; ``representation``),
        KL_g per StructDRAW step (one batch), and for the MNIST datasets the fraction of inferred
        scenes and of ``val_generations`` mode generations whose objects obey the layout part of
        the rule (:data:`~inference.metrics.rules.LAYOUT_RULES`, positions only, no S-Acc checker)."""
        from pyro import poutine

        from inference.evaluation import gnm as evaluation
        from inference.evaluation.data import scenes
        from inference.metrics.rules import LAYOUT_RULES

        n, bs = min(config["val_items"], len(dataset)), config["batch_size"]
        device = next(model.parameters()).device
        found = evaluation.infer_scenes(guide, dataset, n, bs, device)
        res = evaluation.detection_results(found, ("box-ap", "count-accuracy", "representation"))
        out = {k: res[k] for k in ("box-ap@0.5", "count-accuracy", "representation")}
        images = scenes(dataset, 0, min(n, bs))["image"].to(device)
        gtr = poutine.trace(guide).get_trace(images)
        mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(images)
        out["kl_g_per_step"] = kl_g_per_step(mtr, gtr)
        rule = LAYOUT_RULES.get(config["dataset"])
        if rule is not None:
            out.update(evaluation.layout_rates(model, found, rule, config.get("val_generations", 100), bs))
        return out

    def evaluate(self, model, guide, dataset, config, metrics, options) -> Dict:
        """The GNM metrics (:func:`~inference.evaluation.gnm.evaluate_gnm`) and ``ll``."""
        from inference.evaluation.gnm import evaluate_gnm

        out = super().evaluate(model, guide, dataset, config, metrics, options)
        gnm = evaluate_gnm(model, guide, dataset, config["dataset"], metrics, options.num_samples, options.batch_size,
                           options.device, options.progress, options.metric_options)
        out["results"].update(gnm.pop("results"))
        return {**out, **gnm}

    def evaluation_plots(self, evaluation, prefix: Path) -> List[Path]:
        from inference.evaluation.gnm import gnm_plots

        return gnm_plots(evaluation, prefix) + super().evaluation_plots(evaluation, prefix)

    def log_likelihood(self, model, guide, images, config, num_particles=100, batch_particles=10, relaxed=False):
        """Importance-weighted log p(x) per image (nats). z_pres is drawn HARD (Bernoulli) and scored
        by its Bernoulli mass, a proper estimator for GNM's discrete z_pres; ``relaxed=True`` draws it
        at the final Concrete temperature instead, scoring it with the same formula (the authors' way)."""
        from inference.handlers.temperature import RelaxationTemperature
        from inference.likelihood import importance_log_likelihood

        with RelaxationTemperature(config["tau_end"] if relaxed else 0.0):
            return importance_log_likelihood(model, guide, images, num_particles=num_particles, batch_particles=batch_particles,
                                             max_plate_nesting=2)

    def figures(self, model, guide, batch, out_dir: Path, step: int) -> List[Path]:
        from inference.figures.gnm import gnm_figures

        images = batch["image"] if isinstance(batch, dict) else batch
        return gnm_figures(model, guide, images[:8], Path(out_dir), prefix="gnm_")


# ---------------------------------------------------------------------- diagnostics
@torch.no_grad()
def kl_g_per_step(model_trace, guide_trace) -> List[float]:
    """KL(q(z^g_l) || p(z^g_l | z^g_<l)) for l = 1..L (sites ``z_g_1..L``), unweighted by beta_g,
    summed over z^g_l's dimensions and averaged over the batch, from a guide trace and the model
    trace replayed on it (the analytic KL that ``TraceMeanField_ELBO`` adds for these sites)."""
    from torch.distributions import kl_divergence

    out, l = [], 1
    while f"z_g_{l}" in guide_trace.nodes:
        q, p = guide_trace.nodes[f"z_g_{l}"]["fn"], model_trace.nodes[f"z_g_{l}"]["fn"]
        kl = kl_divergence(q, p)
        out.append(float(kl.detach().sum()) / kl.shape[0])
        l += 1
    return out

