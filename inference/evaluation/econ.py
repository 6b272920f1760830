"""ECON evaluation: ARI, foreground ARI, mean segmentation covering, expert specialisation and
shape-completion IoU on held-out sprites scenes (protocols in docs/metrics.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import torch

from inference.metrics import econ as econ_metrics
from inference.metrics.segmentation import ari, mean_segmentation_covering

METRICS = ("ari", "fg-ari", "msc", "specialisation", "shape-iou")


def decompose(model, guide, images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Greedy decomposition (``guide.decompose`` when the guide has one, else
    :func:`inference.decompose.decompose`)."""
    if hasattr(guide, "decompose"):
        return guide.decompose(images, greedy=True)
    from inference.decompose import decompose as _decompose
    return _decompose(model, guide, images, greedy=True)


def class_names(dataset) -> List[str]:
    try:
        from datasets.sprites import CLASS_NAMES
        return list(CLASS_NAMES)
    except ImportError:  # pragma: no cover
        return [str(i) for i in range(3)]


@torch.no_grad()
def evaluate_econ(model, guide, dataset, metrics: Sequence[str] = METRICS, num_samples: int = 1000,
                  batch_size: int = 32, device="cpu", progress: bool = True) -> Dict:
    """Run the ECON metrics on the first ``num_samples`` scenes of ``dataset``.

    Returns ``{"results": {...}, "per_image": {...}, "matrix": ..., ...}``: ``results`` holds the
    JSON-ready numbers, the rest feeds the plots.
    """
    model.eval()
    guide.eval()
    n = min(int(num_samples), len(dataset))
    if n < 1:
        raise ValueError("no scenes to evaluate")
    names = class_names(dataset)
    num_classes = len(names)
    num_experts = int(getattr(model, "num_experts", 0)) or None
    aris, fg_aris, mscs = [], [], []
    classes, experts, ious_pred, ious_true, occluded = [], [], [], [], []
    bg_experts, winners = [], []
    rng = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm
        rng = tqdm(rng, desc="ECON evaluation", unit="batch")
    for s in rng:
        idx = list(range(s, min(s + batch_size, n)))
        batch = dataset.generate(idx) if hasattr(dataset, "generate") else _stack([dataset[i] for i in idx])
        x = batch["image"].to(device)
        dec = decompose(model, guide, x)
        regions = dec["regions"].float().cpu()
        winners.append(dec["experts"].cpu())
        pred = econ_metrics.segmentation_from_regions(regions)
        true = batch["segmentation"]
        if pred.shape != true.shape:
            raise ValueError(f"decomposition is {tuple(pred.shape)} but the ground truth is {tuple(true.shape)}")
        if {"ari"} & set(metrics):
            aris.append(ari(true, pred))
        if {"fg-ari"} & set(metrics):
            fg_aris.append(ari(true, pred, ignore=0))
        if {"msc"} & set(metrics):
            mscs.append(mean_segmentation_covering(true, pred))
        if {"specialisation", "shape-iou"} & set(metrics):
            layer = econ_metrics.assign_objects_to_layers(batch["visible_masks"], regions, batch["valid"])
            exp = dec["experts"].cpu()
            ok = layer >= 0
            won = torch.where(ok, torch.gather(exp, 1, layer.clamp_min(0)), torch.full_like(layer, -1))
            classes.append(torch.where(ok, batch["labels"], torch.full_like(layer, -1)))
            experts.append(won)
            bg_layer = econ_metrics.assign_background_layer(true, regions)
            bg_experts.append(torch.gather(exp, 1, bg_layer.clamp_min(0)[:, None])[:, 0])
            masks = dec["masks"].float().cpu()[:, :, 0]  # (B, T, H, W)
            pm = torch.gather(masks, 1, layer.clamp_min(0)[:, :, None, None].expand(-1, -1, *masks.shape[-2:]))
            ious_pred.append(pm)
            ious_true.append(batch["masks"])
            vis = batch["visible_masks"].flatten(2).sum(-1)
            full = batch["masks"].flatten(2).sum(-1)
            occluded.append(ok & batch["valid"] & (vis < full))
    results: Dict = {"num_scenes": n}
    won = torch.cat(winners)  # (n, T): winning expert per layer
    ne = num_experts or int(won.max()) + 1
    # win_share[t - 1][k]: share of the scenes whose layer t (1 = back) expert k explains
    results["win_share"] = [torch.bincount(won[:, t], minlength=ne).div(n).tolist() for t in range(won.shape[1])]
    out: Dict = {"results": results, "per_image": {}, "class_names": names}
    for key, vals in (("ari", aris), ("fg-ari", fg_aris), ("msc", mscs)):
        if vals:
            v = torch.cat(vals)
            out["per_image"][key] = v
            good = v[~torch.isnan(v)]
            results[key] = float(good.mean()) if len(good) else float("nan")
            results[f"{key}_std"] = float(good.std()) if len(good) > 1 else float("nan")
    if "specialisation" in metrics:
        c = torch.cat(classes).reshape(-1)
        e = torch.cat(experts).reshape(-1)
        bg = torch.cat(bg_experts)
        # the background is class ``num_classes``
        c_all = torch.cat([c, torch.full_like(bg, num_classes)])
        e_all = torch.cat([e, bg])
        ne = num_experts or int(e_all.max()) + 1
        spec = econ_metrics.expert_specialisation(c_all, e_all, num_classes=num_classes + 1, num_experts=ne)
        obj = econ_metrics.expert_specialisation(c, e, num_classes=num_classes, num_experts=ne)
        results["specialisation"] = obj["mean"]
        results["specialisation_with_background"] = spec["mean"]
        results["specialisation_per_class"] = {nm: float(v) for nm, v in
                                               zip(names + ["background"], spec["per_class"].tolist())}
        results["best_expert_per_class"] = {nm: int(v) for nm, v in zip(names + ["background"], spec["best_expert"].tolist())}
        results["experts_distinct"] = spec["distinct"]
        results["specialisation_matrix"] = spec["matrix"].tolist()
        out["matrix"] = spec["matrix"]
    if "shape-iou" in metrics:
        r = econ_metrics.shape_completion_iou(torch.cat([p.flatten(0, 1) for p in ious_pred]),
                                              torch.cat([t.flatten(0, 1) for t in ious_true]),
                                              torch.cat([o.flatten() for o in occluded]))
        results["shape-iou"] = r["mean"]
        results["shape-iou_count"] = r["count"]
        out["per_image"]["shape-iou"] = r["per_object"][~torch.isnan(r["per_object"])]
    return out


def _stack(items):
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


def econ_plots(out: Dict, prefix: Path) -> List[Path]:
    from . import plots

    paths = []
    res = out["results"]
    scalars = {k: res[k] for k in ("ari", "fg-ari", "msc", "specialisation", "shape-iou") if k in res}
    if scalars:
        paths.append(plots.bar_chart(scalars, prefix.with_name(prefix.name + "_summary.png"), "ECON metrics"))
    if out["per_image"]:
        paths.append(plots.histograms(out["per_image"], prefix.with_name(prefix.name + "_hist.png"),
                                      "per-image / per-object distributions"))
    if "matrix" in out:
        m = out["matrix"]
        paths.append(plots.heatmap(m, out["class_names"] + ["background"], [str(j) for j in range(m.shape[1])],
                                   prefix.with_name(prefix.name + "_specialisation.png"),
                                   "objects won per expert (row-normalised colour, counts)"))
    return paths
