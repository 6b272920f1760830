"""The papers' evaluation metrics as a library (protocols in docs/metrics.md).

* segmentation: :func:`ari` (``ignore=0``: foreground ARI), :func:`mean_segmentation_covering`,
  :func:`segmentation_covering`
* detection: :func:`box_ap`, :func:`average_precision`, :func:`box_iou`, :func:`count_accuracy`
* ECON: :func:`expert_specialisation`, :func:`shape_completion_iou`,
  :func:`assign_objects_to_layers`
* GNM: :func:`d_steps`, :func:`zwhat_classification_accuracy`, :func:`nearest_object_labels`,
  S-Acc via :class:`StructureChecker` / :func:`structure_accuracy`
* log-likelihood: :func:`inference.likelihood.importance_log_likelihood`
"""
from .detection import COCO_IOU_THRESHOLDS, average_precision, box_ap, box_iou, count_accuracy
from .dsteps import DSTEPS_PROTOCOL, d_steps
from .econ import assign_background_layer, assign_objects_to_layers, expert_specialisation, shape_completion_iou
from .representation import nearest_object_labels, zwhat_classification_accuracy
from .segmentation import ari, mean_segmentation_covering, segmentation_covering
from .structure import StructureChecker, TrainSettings, structure_accuracy

__all__ = [
    "ari", "mean_segmentation_covering", "segmentation_covering",
    "box_iou", "average_precision", "box_ap", "count_accuracy", "COCO_IOU_THRESHOLDS",
    "expert_specialisation", "shape_completion_iou", "assign_objects_to_layers", "assign_background_layer",
    "d_steps", "DSTEPS_PROTOCOL", "zwhat_classification_accuracy", "nearest_object_labels",
    "StructureChecker", "TrainSettings", "structure_accuracy",
]
