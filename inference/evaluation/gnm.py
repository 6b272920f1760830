"""GNM evaluation: box AP, count accuracy and z_what representation accuracy of the inferred
scenes, S-Acc and D-Steps of generations, and the layout rates of validation (protocols in
docs/metrics.md). The log-likelihood is the recipe's (:mod:`inference.evaluation.likelihood`)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from inference.evaluation import plots
from inference.evaluation.data import scene_batches, scenes
from inference.metrics.detection import box_ap, count_accuracy
from inference.metrics.dsteps import d_steps
from inference.metrics.representation import nearest_object_labels, zwhat_classification_accuracy
from inference.metrics.rules import LAYOUT_RULES


@torch.no_grad()
def evaluate_gnm(model, guide, dataset, dataset_name: str, metrics: Sequence[str], num_samples: int = 1000,
                 batch_size: int = 32, device="cpu", progress: bool = True, metric_options: Optional[Dict] = None) -> Dict:
    """Run the GNM ``metrics`` on ``num_samples`` held-out scenes and as many generations.

    ``layout``: the share of inferred scenes and of ``num_samples`` mode generations whose objects
    obey the layout part of the dataset's rule (positions only, :data:`LAYOUT_RULES`; no checker).
    ``s-acc-recon``: S-Acc of the deterministic reconstructions of the held-out scenes (all of
    which obey the rule): how legible the decoded digits are, a ceiling on S-Acc of generations
    drawn with the same decoder (docs/gnm.md, "What bounds S-Acc").
    ``metric_options``: ``{"s-acc": {"cache": ..., "settings": ...}}`` for the S-Acc checker
    (:meth:`~inference.metrics.structure.StructureChecker.load`) and ``{"d-steps": {...}}`` for
    :func:`~inference.metrics.dsteps.d_steps`. Returns ``{"results": {...}, ...}``: ``results``
    holds the JSON-ready numbers, the rest feeds :func:`gnm_plots`.
    """
    options = metric_options or {}
    n = min(int(num_samples), len(dataset))
    if n < 1:
        raise ValueError("no scenes to evaluate")
    out: Dict = {"results": {"num_scenes": n}}
    if {"box-ap", "count-accuracy", "representation", "layout"} & set(metrics):
        found = infer_scenes(guide, dataset, n, batch_size, device, progress)
        out["results"].update(detection_results(found, metrics))
        rule = LAYOUT_RULES.get(dataset_name)
        if "layout" in metrics and rule is not None:
            out["results"].update(layout_rates(model, found, rule, n, batch_size))
    if "s-acc-recon" in metrics:
        recon = reconstructions(model, guide, dataset, n, batch_size, device)
        results, _ = structure_results(recon, dataset_name, progress, **options.get("s-acc", {}))
        out["results"].update({f"{k.replace('s-acc', 's-acc-recon')}": v for k, v in results.items()})
    if {"s-acc", "d-steps"} & set(metrics):
        fake = generate(model, n, batch_size, progress)
        out["generations"] = fake[:32]
        if "s-acc" in metrics:
            results, out["s-acc_verdicts"] = structure_results(fake, dataset_name, progress, **options.get("s-acc", {}))
            out["results"].update(results)
        if "d-steps" in metrics:
            results, out["d-steps_history"] = d_steps_results(dataset, fake, progress, **options.get("d-steps", {}))
            out["results"].update(results)
    return out


@torch.no_grad()
def generate(model, n: int, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """``n`` generations (mode z^s, as the authors), clamped to [0, 1]."""
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="generating", unit="batch")
    return torch.cat([model.sample(min(batch_size, n - s)).float().cpu().clamp(0, 1) for s in starts])


@torch.no_grad()
def reconstructions(model, guide, dataset, n: int, batch_size: int, device="cpu") -> torch.Tensor:
    """Deterministic reconstructions (:func:`~inference.figures.gnm.reconstruct`) of the first
    ``n`` scenes, clamped to [0, 1], on the CPU."""
    from inference.figures.gnm import reconstruct

    return torch.cat([reconstruct(model, guide, batch["image"].to(device))["recon"].float().cpu().clamp(0, 1)
                      for _, batch in scene_batches(dataset, n, batch_size)])


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` boxes (x0, y0, x1, y1) -> ``(..., 2)`` centres (x, y)."""
    return torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], -1)


@torch.no_grad()
def infer_scenes(guide, dataset, n: int, batch_size: int, device="cpu", progress: bool = False) -> Dict[str, torch.Tensor]:
    """The guide's scenes (:meth:`~guides.GNMGuide.infer`) for the first ``n`` items, beside the
    truth: per cell ``boxes``, ``scores`` (presence probability), ``pres``, ``z_what``, the label
    of the nearest true object and the ``image`` index; per scene the true boxes, their
    ``valid`` flags and ``counts``."""
    parts = []
    for start, batch in scene_batches(dataset, n, batch_size, "inferring", progress):
        inferred = guide.infer(batch["image"].to(device))
        boxes, pres = inferred["boxes"].float().cpu(), inferred["pres"].bool().cpu()
        labels, _ = nearest_object_labels(box_centres(boxes), batch["boxes"], batch["labels"], batch["valid"])
        parts.append(dict(boxes=boxes, scores=inferred["pres_prob"].float().cpu(), pres=pres,
                          z_what=inferred["z_what"].float().cpu(), labels=labels,
                          image=(torch.arange(len(pres))[:, None] + start).expand_as(pres),
                          true_boxes=batch["boxes"], valid=batch["valid"], counts=batch["num_objects"]))
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def detection_results(scenes_found: Dict[str, torch.Tensor], metrics: Sequence[str]) -> Dict:
    """Box AP, count accuracy and z_what representation accuracy of :func:`infer_scenes`' output."""
    found, results = scenes_found, {}
    if "box-ap" in metrics:
        ap = box_ap(found["boxes"], found["true_boxes"], found["scores"], pred_valid=found["pres"], true_valid=found["valid"])
        results["box-ap@0.5"] = ap["AP@0.5"]
        results["box-ap@[.5:.95]"] = ap["AP@[.5:.95]"]
        results["box-ap_per_threshold"] = {k: v for k, v in ap.items() if k.startswith("AP@0")}
    if "count-accuracy" in metrics:
        results["count-accuracy"] = count_accuracy(found["pres"].sum(1), found["counts"])
    if "representation" in metrics:
        pres = found["pres"]
        try:
            r = zwhat_classification_accuracy(found["z_what"][pres], found["labels"][pres], found["image"][pres])
            results["representation"] = r["accuracy"]
            results["representation_detail"] = {k: v for k, v in r.items() if k != "accuracy"}
        except ValueError as e:
            results["representation"] = float("nan")
            results["representation_detail"] = {"error": str(e)}
    return results


def structure_results(fake: torch.Tensor, dataset_name: str, progress: bool = False, cache=None, settings=None) -> Tuple[Dict, Optional[Tuple]]:
    """S-Acc of generations ``fake`` by the checker of ``dataset_name``, and the first 32 verdicts.

    ``s-acc-layout``: the share of images whose checker detections (any digit class) obey the
    layout part of the rule (:data:`LAYOUT_RULES`): the rule without the digit identities, for
    any generator, including those without boxes (docs/metrics.md)."""
    from inference.metrics.structure import FAMILIES, StructureChecker

    if dataset_name not in FAMILIES:
        return {"s-acc": None, "s-acc_note": f"no structure checker for dataset {dataset_name!r}"}, None
    checker = StructureChecker.load(dataset_name, cache=cache, settings=settings, image_size=fake.shape[-1], progress=progress)
    res = checker.check(fake, progress=progress)
    results = {"s-acc": res.accuracy, "s-acc_reasons": res.summary()["reasons"], "s-acc_checker": checker.info.get("cache_path")}
    layout = LAYOUT_RULES.get(dataset_name)
    if layout is not None and res.detections:
        ok = [layout(d.centres, checker.image_size)[0] for d in res.detections]
        results["s-acc-layout"] = sum(ok) / len(ok)
    return results, (res.valid[:32], res.reasons[:32])


def d_steps_results(real_dataset, fake: torch.Tensor, progress: bool = False, **protocol) -> Tuple[Dict, List]:
    """D-Steps of generations ``fake`` against as many images of ``real_dataset`` (``protocol``
    overrides :data:`~inference.metrics.dsteps.DSTEPS_PROTOCOL` values), and the accuracy curve."""
    num_real = min(len(fake), len(real_dataset))
    real = torch.cat([scenes(real_dataset, s, min(s + 256, num_real))["image"] for s in range(0, num_real, 256)])
    m = min(len(real), len(fake))
    num_eval = min(500, max(1, m // 5))
    r = d_steps(real[:m], fake[:m], progress=progress, **{"num_eval": num_eval, "num_train": m - num_eval, **protocol})
    return {"d-steps": r["steps"], "d-steps_reached": r["reached"], "d-steps_protocol": r["protocol"]}, r["history"]


def layout_verdicts(pres: torch.Tensor, boxes: torch.Tensor, rule, image_size: int) -> List[bool]:
    """Per image, whether the centres of the present boxes (``pres`` (B, K) bool, ``boxes``
    (B, K, 4) pixels) obey ``rule`` (a layout check of :mod:`inference.metrics.rules`)."""
    pres, centres = pres.bool().cpu(), box_centres(boxes.float().cpu())
    return [bool(rule(centres[i][pres[i]], image_size)[0]) for i in range(len(pres))]


@torch.no_grad()
def layout_rates(model, scenes_found: Dict[str, torch.Tensor], rule, num_generations: int, batch_size: int) -> Dict[str, float]:
    """The fraction of inferred scenes (:func:`infer_scenes`' output) and of ``num_generations``
    mode generations (none if 0) whose objects obey the layout ``rule``."""
    from pyro import poutine

    size = model.cfg.image_size
    inferred = layout_verdicts(scenes_found["pres"], scenes_found["boxes"], rule, size)
    out = {"layout-inferred": sum(inferred) / len(inferred)}
    generated = []
    for s in range(0, num_generations, batch_size):
        tr = poutine.trace(model).get_trace(batch_size=min(batch_size, num_generations - s), mode=True)
        generated += layout_verdicts(tr.nodes["z_pres"]["value"] > 0.5, model.boxes(tr.nodes["z_where"]["value"]), rule, size)
    if generated:
        out["layout-generated"] = sum(generated) / len(generated)
    return out


def gnm_plots(out: Dict, prefix: Path) -> List[Path]:
    """Bar chart of the summary numbers, the D-Steps curve and the generations with their S-Acc verdicts."""
    res = out["results"]
    paths = []
    scalars = {k: res[k] for k in ("box-ap@0.5", "box-ap@[.5:.95]", "count-accuracy", "s-acc", "representation")
               if isinstance(res.get(k), float)}
    if scalars:
        paths.append(plots.bar_chart(scalars, plots.named(prefix, "summary"), "GNM metrics"))
    if "d-steps_history" in out:
        paths.append(plots.curve(out["d-steps_history"], plots.named(prefix, "dsteps"),
                                 "D-Steps: held-out accuracy of real-vs-generated classifier", "step", "accuracy",
                                 hline=res.get("d-steps_protocol", {}).get("threshold")))
    if "generations" in out and len(out["generations"]):
        caps = None
        if out.get("s-acc_verdicts") is not None:
            v, why = out["s-acc_verdicts"]
            caps = ["ok" if ok else r[:28] for ok, r in zip(v.tolist(), why)]
        paths.append(plots.image_grid(out["generations"], plots.named(prefix, "generations"),
                                      captions=caps, title="generations (caption: S-Acc verdict)"))
    return paths
