"""GNM evaluation: box AP, count accuracy, importance-weighted LL, S-Acc and D-Steps of
generations, and z_what representation accuracy (protocols in docs/metrics.md)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from inference.metrics.detection import box_ap, count_accuracy
from inference.metrics.dsteps import d_steps
from inference.metrics.representation import nearest_object_labels, zwhat_classification_accuracy

METRICS = ("box-ap", "count-accuracy", "ll", "s-acc", "d-steps", "representation")


def _progress(it, desc, progress, total=None):
    if not progress:
        return it
    from tqdm import tqdm
    return tqdm(it, desc=desc, total=total, unit="batch")


@torch.no_grad()
def generate(model, n: int, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """``n`` generations (mode z^s, as the authors), clamped to [0, 1]."""
    out = []
    for s in _progress(range(0, n, batch_size), "generating", progress):
        x = model.sample(min(batch_size, n - s)) if hasattr(model, "sample") else model(batch_size=min(batch_size, n - s))
        out.append(x.detach().float().cpu().clamp(0, 1))
    return torch.cat(out) if out else torch.zeros(0)


def _real_images(dataset, n: int, start: int = 0) -> Dict[str, torch.Tensor]:
    idx = list(range(start, start + n))
    if hasattr(dataset, "generate"):
        return dataset.generate(idx)
    items = [dataset[i] for i in idx]
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


@torch.no_grad()
def evaluate_gnm(recipe, config: Dict, model, guide, dataset, metrics: Sequence[str] = METRICS,
                 num_samples: int = 1000, batch_size: int = 32, device="cpu", particles: Optional[int] = None,
                 ll_images: Optional[int] = None, checker_cache=None, checker_settings=None,
                 dsteps_options: Optional[Dict] = None, progress: bool = True, train_dataset=None) -> Dict:
    """Run the GNM metrics on ``num_samples`` held-out scenes and as many generations.

    ``particles``: importance samples for LL (default the config's ``ll_particles``, 100);
    ``ll_images``: how many held-out images LL is estimated on (default min(num_samples, 200));
    ``train_dataset``: real images for D-Steps (default: the held-out ``dataset``).
    """
    model.eval()
    guide.eval()
    metrics = list(metrics)
    n = min(int(num_samples), len(dataset))
    if n < 1:
        raise ValueError("no scenes to evaluate")
    results: Dict = {"num_scenes": n}
    out: Dict = {"results": results}
    name = config.get("dataset", "")

    # -- inference-based metrics on held-out scenes -----------------------------------------
    if {"box-ap", "count-accuracy", "representation"} & set(metrics):
        pred_boxes, scores, pres, true_boxes, true_valid, counts = [], [], [], [], [], []
        feats, labels, img_idx = [], [], []
        for s in _progress(range(0, n, batch_size), "inferring", progress):
            b = _real_images(dataset, min(batch_size, n - s), s)
            inf = guide.infer(b["image"].to(device))
            p = inf["pres"].bool().cpu()
            pred_boxes.append(inf["boxes"].float().cpu())
            scores.append(inf["pres_prob"].float().cpu())
            pres.append(p)
            true_boxes.append(b["boxes"])
            true_valid.append(b["valid"])
            counts.append(b["num_objects"])
            if "representation" in metrics:
                bx = inf["boxes"].float().cpu()
                centres = torch.stack([(bx[..., 0] + bx[..., 2]) / 2, (bx[..., 1] + bx[..., 3]) / 2], -1)
                lab, _ = nearest_object_labels(centres, b["boxes"], b["labels"], b["valid"])
                feats.append(inf["z_what"].float().cpu()[p])
                labels.append(lab[p])
                img_idx.append((torch.arange(p.shape[0])[:, None] + s).expand_as(p)[p])
        P, S, PR = torch.cat(pred_boxes), torch.cat(scores), torch.cat(pres)
        if "box-ap" in metrics:
            ap = box_ap(P, torch.cat(true_boxes), S, pred_valid=PR, true_valid=torch.cat(true_valid))
            results["box-ap@0.5"] = ap["AP@0.5"]
            results["box-ap@[.5:.95]"] = ap["AP@[.5:.95]"]
            results["box-ap_per_threshold"] = {k: v for k, v in ap.items() if k.startswith("AP@0")}
        if "count-accuracy" in metrics:
            pc, tc = PR.sum(1), torch.cat(counts)
            results["count-accuracy"] = count_accuracy(pc, tc)
            out["counts"] = (pc, tc)
        if "representation" in metrics:
            f, l, i = torch.cat(feats), torch.cat(labels), torch.cat(img_idx)
            try:
                r = zwhat_classification_accuracy(f, l, i)
                results["representation"] = r["accuracy"]
                results["representation_detail"] = {k: v for k, v in r.items() if k != "accuracy"}
            except ValueError as e:
                results["representation"] = float("nan")
                results["representation_detail"] = {"error": str(e)}

    # -- log-likelihood -------------------------------------------------------------------------
    if "ll" in metrics:
        k = particles or int(config.get("ll_particles", 100))
        m = min(n, ll_images or 200)
        vals = []
        for s in _progress(range(0, m, batch_size), f"LL (K={k})", progress):
            x = _real_images(dataset, min(batch_size, m - s), s)["image"].to(device)
            if hasattr(recipe, "log_likelihood"):
                vals.append(recipe.log_likelihood(model, guide, x, config, num_particles=k).float().cpu())
            else:
                from inference.likelihood import importance_log_likelihood
                vals.append(importance_log_likelihood(model, guide, x, num_particles=k).float().cpu())
        ll = torch.cat(vals)
        results["ll"] = float(ll.mean())
        results["ll_sem"] = float(ll.std() / math.sqrt(len(ll))) if len(ll) > 1 else float("nan")
        results["ll_images"] = m
        results["ll_particles"] = k
        out["ll"] = ll

    # -- generation-based metrics -------------------------------------------------------------
    if {"s-acc", "d-steps"} & set(metrics):
        fake = generate(model, n, batch_size, progress)
        out["generations"] = fake[:32]
        if "s-acc" in metrics:
            from inference.metrics.structure import FAMILIES, StructureChecker
            if name in FAMILIES:
                checker = StructureChecker.load(name, cache=checker_cache, settings=checker_settings,
                                                image_size=fake.shape[-1], progress=progress)
                res = checker.check(fake, progress=progress)
                results["s-acc"] = res.accuracy
                results["s-acc_reasons"] = res.summary()["reasons"]
                results["s-acc_checker"] = checker.info.get("cache_path")
                out["s-acc_verdicts"] = (res.valid[:32], res.reasons[:32])
            else:
                results["s-acc"] = None
                results["s-acc_note"] = f"no structure checker for dataset {name!r}"
        if "d-steps" in metrics:
            real_ds = train_dataset if train_dataset is not None else dataset
            num_real = min(n, len(real_ds))
            real = torch.cat([_real_images(real_ds, min(256, num_real - s), s)["image"]
                              for s in range(0, num_real, 256)])
            m = min(len(real), len(fake))
            num_eval = min(500, max(1, m // 5))
            kw = dict(num_eval=num_eval, num_train=m - num_eval)
            kw.update(dsteps_options or {})
            r = d_steps(real[:m], fake[:m], progress=progress, **kw)
            results["d-steps"] = r["steps"]
            results["d-steps_reached"] = r["reached"]
            results["d-steps_protocol"] = r["protocol"]
            out["d-steps_history"] = r["history"]
    return out


def gnm_plots(out: Dict, prefix: Path) -> List[Path]:
    from . import plots

    res = out["results"]
    paths = []
    scalars = {k: res[k] for k in ("box-ap@0.5", "box-ap@[.5:.95]", "count-accuracy", "s-acc", "representation")
               if isinstance(res.get(k), float)}
    if scalars:
        paths.append(plots.bar_chart(scalars, prefix.with_name(prefix.name + "_summary.png"), "GNM metrics"))
    if "ll" in out:
        paths.append(plots.histograms({"log p(x) (nats)": out["ll"]}, prefix.with_name(prefix.name + "_ll.png"),
                                      f"importance-weighted LL per image (K = {res.get('ll_particles')})"))
    if "d-steps_history" in out:
        paths.append(plots.curve(out["d-steps_history"], prefix.with_name(prefix.name + "_dsteps.png"),
                                 "D-Steps: held-out accuracy of real-vs-generated classifier", "step", "accuracy",
                                 hline=res.get("d-steps_protocol", {}).get("threshold")))
    if "generations" in out and len(out["generations"]):
        caps = None
        if "s-acc_verdicts" in out:
            v, why = out["s-acc_verdicts"]
            caps = ["ok" if ok else r[:28] for ok, r in zip(v.tolist(), why)]
        paths.append(plots.image_grid(out["generations"], prefix.with_name(prefix.name + "_generations.png"),
                                      captions=caps, title="generations (caption: S-Acc verdict)"))
    return paths
