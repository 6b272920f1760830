"""ECON evaluation: ARI, foreground ARI, mean segmentation covering, expert specialisation and
shape-completion IoU on held-out sprites scenes (protocols in docs/metrics.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import torch

from datasets.sprites import CLASS_NAMES
from inference.decompose import decompose, regions_from_masks
from inference.evaluation import plots
from inference.evaluation.data import scene_batches
from inference.metrics import econ as econ_metrics
from inference.metrics.segmentation import ari, mean_segmentation_covering

#: per-image segmentation metrics: (true, predicted) segmentations -> one value per image
SEGMENTATION = {
    "ari": ari,
    "fg-ari": lambda true, pred: ari(true, pred, ignore=0),
    "msc": mean_segmentation_covering,
}


@torch.no_grad()
def evaluate_econ(model, guide, dataset, metrics: Sequence[str], num_samples: int = 1000, batch_size: int = 32,
                  device="cpu", progress: bool = True, given_regions: bool = False) -> Dict:
    """Run the ECON ``metrics`` on the first ``num_samples`` scenes of ``dataset``, each scene
    decomposed greedily (:func:`inference.decompose.decompose`); with ``given_regions``, on the
    scenes' visible masks (generative MONet), so that only the experts and the shapes are inferred.

    Returns ``{"results": {...}, "per_image": {...}, "matrix": ..., ...}``: ``results`` holds the
    JSON-ready numbers, the rest feeds :func:`econ_plots`.
    """
    n = min(int(num_samples), len(dataset))
    if n < 1:
        raise ValueError("no scenes to evaluate")
    segmentation = {m: [] for m in SEGMENTATION if m in metrics}
    assignments, winners = [], []
    for _, batch in scene_batches(dataset, n, batch_size, "ECON evaluation", progress):
        given = regions_from_masks(batch["visible_masks"]).to(device) if given_regions else None
        dec = decompose(model, guide, batch["image"].to(device), greedy=True, regions=given)
        regions = dec["regions"].float().cpu()
        winners.append(dec["experts"].cpu())
        pred, true = econ_metrics.segmentation_from_regions(regions), batch["segmentation"]
        if pred.shape != true.shape:
            raise ValueError(f"decomposition is {tuple(pred.shape)} but the ground truth is {tuple(true.shape)}")
        for m, values in segmentation.items():
            values.append(SEGMENTATION[m](true, pred))
        if {"specialisation", "shape-iou"} & set(metrics):
            assignments.append(layer_assignments(batch, dec["experts"].cpu(), dec["masks"].float().cpu(), regions))
    out: Dict = {"results": {"num_scenes": n, "regions_given": bool(given_regions), "win_share": win_share(torch.cat(winners), model.num_experts)},
                 "per_image": {}, "class_names": list(CLASS_NAMES)}
    for m, values in segmentation.items():
        summarise(out, m, torch.cat(values))
    objects = {k: torch.cat([a[k] for a in assignments]) for k in assignments[0]} if assignments else {}
    if "specialisation" in metrics:
        specialisation(out, objects, model.num_experts)
    if "shape-iou" in metrics:
        shape_iou(out, objects)
    return out


def win_share(winners: torch.Tensor, num_experts: int) -> List[List[float]]:
    """``[t - 1][k]``: the share of scenes whose layer t (1 = back) expert k explains; ``winners`` (n, T)."""
    return [torch.bincount(winners[:, t], minlength=num_experts).div(len(winners)).tolist() for t in range(winners.shape[1])]


def layer_assignments(batch: Dict, experts: torch.Tensor, masks: torch.Tensor, regions: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Each true object's inferred layer (by visible-mask overlap) read out: its class and the
    expert that won the layer (-1 for objects without a layer), the layer's full shape, the
    true full shape and whether the object is occluded; and the background layer's expert.
    ``experts`` (B, T), ``masks`` (B, T, 1, H, W) and ``regions`` come from the decomposition."""
    layer = econ_metrics.assign_objects_to_layers(batch["visible_masks"], regions, batch["valid"])
    found, index = layer >= 0, layer.clamp_min(0)
    missing = torch.full_like(layer, -1)
    background = econ_metrics.assign_background_layer(batch["segmentation"], regions).clamp_min(0)
    shapes = masks[:, :, 0]
    visible, full = batch["visible_masks"].flatten(2).sum(-1), batch["masks"].flatten(2).sum(-1)
    return dict(
        classes=torch.where(found, batch["labels"], missing),
        experts=torch.where(found, torch.gather(experts, 1, index), missing),
        background=torch.gather(experts, 1, background[:, None])[:, 0],
        pred_masks=torch.gather(shapes, 1, index[:, :, None, None].expand(-1, -1, *shapes.shape[-2:])),
        true_masks=batch["masks"],
        occluded=found & batch["valid"] & (visible < full),
    )


def summarise(out: Dict, metric: str, values: torch.Tensor) -> None:
    """Per-image ``values`` of ``metric`` into ``out``: their mean and std (NaNs left out)."""
    out["per_image"][metric] = values
    good = values[~torch.isnan(values)]
    out["results"][metric] = float(good.mean()) if len(good) else float("nan")
    out["results"][f"{metric}_std"] = float(good.std()) if len(good) > 1 else float("nan")


def specialisation(out: Dict, objects: Dict[str, torch.Tensor], num_experts: int) -> None:
    """Expert specialisation of the objects alone and with the background as one more class."""
    names = list(CLASS_NAMES) + ["background"]
    classes, experts, background = objects["classes"].reshape(-1), objects["experts"].reshape(-1), objects["background"]
    spec = econ_metrics.expert_specialisation(torch.cat([classes, torch.full_like(background, len(CLASS_NAMES))]),
                                              torch.cat([experts, background]), num_classes=len(names), num_experts=num_experts)
    obj = econ_metrics.expert_specialisation(classes, experts, num_classes=len(CLASS_NAMES), num_experts=num_experts)
    out["results"].update(
        specialisation=obj["mean"],
        specialisation_with_background=spec["mean"],
        specialisation_per_class={nm: float(v) for nm, v in zip(names, spec["per_class"].tolist())},
        best_expert_per_class={nm: int(v) for nm, v in zip(names, spec["best_expert"].tolist())},
        experts_distinct=spec["distinct"],
        specialisation_matrix=spec["matrix"].tolist(),
    )
    out["matrix"] = spec["matrix"]


def shape_iou(out: Dict, objects: Dict[str, torch.Tensor]) -> None:
    """Shape-completion IoU of the occluded objects' full shapes."""
    r = econ_metrics.shape_completion_iou(objects["pred_masks"].flatten(0, 1), objects["true_masks"].flatten(0, 1),
                                          objects["occluded"].flatten())
    out["results"]["shape-iou"] = r["mean"]
    out["results"]["shape-iou_count"] = r["count"]
    out["per_image"]["shape-iou"] = r["per_object"][~torch.isnan(r["per_object"])]


def econ_plots(out: Dict, prefix: Path) -> List[Path]:
    """Bar chart of the summary numbers, per-image histograms and the specialisation heatmap."""
    paths = []
    res = out["results"]
    scalars = {k: res[k] for k in ("ari", "fg-ari", "msc", "specialisation", "shape-iou") if k in res}
    if scalars:
        paths.append(plots.bar_chart(scalars, plots.named(prefix, "summary"), "ECON metrics"))
    if out["per_image"]:
        paths.append(plots.histograms(out["per_image"], plots.named(prefix, "hist"), "per-image / per-object distributions"))
    if "matrix" in out:
        m = out["matrix"]
        paths.append(plots.heatmap(m, out["class_names"] + ["background"], [str(j) for j in range(m.shape[1])],
                                   plots.named(prefix, "specialisation"),
                                   "objects won per expert (row-normalised colour, counts)"))
    return paths
