"""A tiny stochastic recipe for the tools' tests (imported by test_training.py, test_svi_cli.py and test_evaluate.py).

Model: z ~ N(0, I) (2-d), x ~ N(W z + b, sigma) on 4x4 images; guide: amortised Normal q(z | x)
that shares the decoder module with the model (so parameter de-duplication matters). Trained with
Trace_ELBO, so every step draws noise (RNG restore matters); the data loader shuffles (data order
matters).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from inference.recipes.base import Recipe


class ToyModel(nn.Module):
    def __init__(self, latent: int, pixels: int):
        super().__init__()
        self.latent = latent
        self.decoder = nn.Linear(latent, pixels)
        self.log_sigma = nn.Parameter(torch.tensor(-0.5))

    def forward(self, x):
        pyro.module("toy_model", self)
        b = x.shape[0]
        x = x.reshape(b, -1)
        with pyro.plate("batch", b):
            z = pyro.sample("z", dist.Normal(x.new_zeros(b, self.latent), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), self.log_sigma.exp()).to_event(1), obs=x)


class ToyGuide(nn.Module):
    def __init__(self, model: ToyModel, pixels: int):
        super().__init__()
        self.latent = model.latent
        self.encoder = nn.Linear(pixels, 2 * model.latent)
        self.decoder = model.decoder  # shared with the model, on purpose

    def forward(self, x):
        pyro.module("toy_guide", self)
        b = x.shape[0]
        loc, log_scale = self.encoder(x.reshape(b, -1)).split(self.latent, -1)
        with pyro.plate("batch", b):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


class ToyDataset(torch.utils.data.Dataset):
    """Deterministic per index: low-rank images plus noise, from a generator seeded by the index."""

    def __init__(self, n: int, size: int, seed: int):
        self.n, self.size, self.seed = n, size, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        a, b = torch.rand(2, generator=g)
        ramp = torch.linspace(0, 1, self.size)
        image = (a * ramp[:, None] + b * ramp[None, :]) / 2 + 0.05 * torch.randn(self.size, self.size, generator=g)
        return {"image": image[None], "index": i}


class ToyRecipe(Recipe):
    name = "toy"
    datasets = ("blocks", "ramps")
    #: hooks set by tests
    interrupt_at = None      # raise KeyboardInterrupt in loss() at this step
    sigint_at = None         # send ourselves SIGINT in loss() at this step
    nan_at = None            # return a NaN loss at this step
    seen = []                # (step, loss) of every loss() call

    def default_config(self, dataset):
        return {"dataset": dataset, "lr": 0.01, "image_size": 4, "num_train": 14, "num_val": 6,
                "latent": 2 if dataset == "blocks" else 3, "clip": 10.0, "scheduler": "none",
                "steps": 12, "batch_size": 4, "log_every": 3, "val_every": 4, "ckpt_every": 5,
                "keep": 3, "tag": "x"}

    def validate_config(self, config):
        if not isinstance(config["latent"], int) or config["latent"] <= 0:
            raise ValueError(f"latent={config['latent']!r}: must be a positive integer")
        if config["scheduler"] not in ("none", "plateau", "step"):
            raise ValueError(f"scheduler={config['scheduler']!r}: must be none, plateau or step")

    def build(self, config, device):
        pixels = config["image_size"] ** 2
        model = ToyModel(config["latent"], pixels).to(device)
        return model, ToyGuide(model, pixels).to(device)

    def make_dataset(self, config, split):
        n = config["num_train"] if split == "train" else config["num_val"]
        return ToyDataset(n, config["image_size"], {"train": 1, "val": 2, "test": 3}[split])

    def make_optimizer(self, params, config):
        return torch.optim.Adam(params, lr=config["lr"])

    def make_scheduler(self, optimizer, config):
        if config["scheduler"] == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=0)  # "max": acts at once on a falling loss
        if config["scheduler"] == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.8)
        return None

    def grad_clip_norm(self, config):
        return config["clip"]

    def loss(self, model, guide, images, step, config):
        if step == ToyRecipe.interrupt_at:
            raise KeyboardInterrupt
        if step == ToyRecipe.sigint_at:
            os.kill(os.getpid(), signal.SIGINT)
        loss = Trace_ELBO().differentiable_loss(model, guide, images) / images.shape[0]
        if step == ToyRecipe.nan_at:
            loss = loss * float("nan")
        if torch.is_grad_enabled():  # training calls only (eval_loss runs under no_grad)
            ToyRecipe.seen.append((step, float(loss.detach())))
        return loss, {"elbo": -float(loss.detach()), "step_seen": float(step)}

    def figures(self, model, guide, batch, out_dir, step):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"recon_{step:08d}.txt"
        path.write_text(f"{batch['image'].shape} {batch['index'].tolist()} {torch.rand(()).item()}\n")
        return [path]


@pytest.fixture
def toy(monkeypatch):
    """Register the toy recipe as ``--model toy`` (the trainer looks recipes up at call time)."""
    import inference.recipes as recipes

    original = recipes.get_recipe

    def get_recipe(name):
        return ToyRecipe() if name == "toy" else original(name)

    monkeypatch.setattr(recipes, "get_recipe", get_recipe)
    monkeypatch.setitem(recipes.RECIPES, "toy", "toy_recipe:ToyRecipe")
    monkeypatch.setattr(ToyRecipe, "interrupt_at", None)
    monkeypatch.setattr(ToyRecipe, "sigint_at", None)
    monkeypatch.setattr(ToyRecipe, "nan_at", None)
    monkeypatch.setattr(ToyRecipe, "seen", [])
    monkeypatch.delenv("CI", raising=False)
    yield ToyRecipe


def train(*args, expect=0):
    """Run the CLI in-process; assert the exit code; return the result."""
    from click.testing import CliRunner

    from inference.svi import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, (result.exit_code, result.output)
    return result
