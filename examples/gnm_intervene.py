"""Counterfactual scene editing with GNM and ``pyro.poutine.do``.

Infer a scene with the guide (posterior mode), then render the model with interventions on its
symbolic map: remove one object (``do`` on ``z_pres``) and move another (``do`` on ``z_where``).

    python examples/gnm_intervene.py --run runs/gnm-mnist4 --out docs/img/gnm_intervene.png

Without ``--run`` an untrained CPU-preset model is used (the figure then only shows the mechanics).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from pyro import poutine  # noqa: E402

from inference.handlers.temperature import RelaxationTemperature  # noqa: E402


def load(run, dataset, index):
    if run:
        from inference.training import restore

        recipe, config, model, guide, step = restore(run)
    else:
        from inference.recipes.gnm import GNMRecipe

        recipe = GNMRecipe()
        config = recipe.default_config(dataset)
        config.update(cache_dir="", seed=0)
        torch.manual_seed(0)
        model, guide = recipe.build(config, torch.device("cpu"))
        step = 0
        print("no --run given: using an untrained model")
    from datasets import make_dataset

    data = make_dataset(config["dataset"], "test", num_scenes=index + 1, image_size=config["image_size"], seed=config.get("seed", 0))
    return model.eval(), guide.eval(), data[index]["image"][None], step


@torch.no_grad()
def intervene(model, guide, x, shift=0.6):
    """Returns the inferred trace, the chosen cells and the four renderings."""
    with RelaxationTemperature(0.0):
        trace = poutine.trace(guide).get_trace(x, mode=True)  # posterior mode: z_pres = (q > 1/2)
        recon = poutine.replay(model, trace=trace)(x)
        z_pres = trace.nodes["z_pres"]["value"]
        z_where = trace.nodes["z_where"]["value"]
        present = torch.argsort(guide.infer(x)["pres_prob"][0], descending=True)
        present = [int(k) for k in present if z_pres[0, k] > 0]
        if len(present) < 2:
            raise SystemExit(f"the inferred scene has {len(present)} object(s); need 2 to remove one and move another")
        gone, moved = present[0], present[1]
        pres_removed = z_pres.clone()
        pres_removed[0, gone] = 0.0
        where_moved = z_where.clone()
        # shift the object horizontally by `shift` cells: c = (2/G)(col + 0.5 + tanh(raw))
        t = torch.tanh(z_where[0, moved, 2]) + shift
        where_moved[0, moved, 2] = torch.atanh(t.clamp(-0.999, 0.999))
        removed = poutine.do(poutine.replay(model, trace=trace), data={"z_pres": pres_removed})(x)
        moved_img = poutine.do(poutine.replay(model, trace=trace), data={"z_where": where_moved})(x)
        both = poutine.do(poutine.replay(model, trace=trace), data={"z_pres": pres_removed, "z_where": where_moved})(x)
    boxes = {"before": model.boxes(z_where)[0], "after": model.boxes(where_moved)[0]}
    return dict(recon=recon, removed=removed, moved=moved_img, both=both, gone=gone, moved_cell=moved, boxes=boxes,
                present=present)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a GNM run directory or checkpoint (python -m inference.svi --model gnm ...)")
    p.add_argument("--dataset", default="mnist4")
    p.add_argument("--index", type=int, default=0, help="test scene index")
    p.add_argument("--shift", type=float, default=0.6, help="move distance in cells (|tanh| stays < 1)")
    p.add_argument("--out", default="docs/img/gnm_intervene.png")
    a = p.parse_args(argv)
    model, guide, x, step = load(a.run, a.dataset, a.index)
    r = intervene(model, guide, x, a.shift)

    def show(ax, img, title, boxes=()):
        img = img[0].clamp(0, 1)
        img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
        ax.imshow(img.permute(1, 2, 0).numpy())
        for (x0, y0, x1, y1), colour in boxes:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.2, ec=colour))
        ax.set_title(title, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])

    b0, b1 = r["boxes"]["before"], r["boxes"]["after"]
    inferred = [(b0[k].tolist(), "lime") for k in r["present"]]
    fig, axes = plt.subplots(1, 5, figsize=(13, 2.9))
    show(axes[0], x, "input + inferred boxes", inferred)
    show(axes[1], r["recon"], "reconstruction")
    show(axes[2], r["removed"], f"do(z_pres[{r['gone']}] = 0)", [(b0[r["gone"]].tolist(), "red")])
    show(axes[3], r["moved"], f"do(z_where[{r['moved_cell']}]) moved", [(b0[r["moved_cell"]].tolist(), "red"), (b1[r["moved_cell"]].tolist(), "yellow")])
    show(axes[4], r["both"], "both interventions")
    fig.suptitle(f"GNM interventions with pyro.poutine.do (model at step {step})", fontsize=10)
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}: removed cell {r['gone']}, moved cell {r['moved_cell']} by {a.shift} cells")
    return r


if __name__ == "__main__":
    main()
