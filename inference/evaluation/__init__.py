"""What the recipes compute to evaluate their models (``Recipe.evaluate``): ECON's decomposition
metrics (:mod:`.econ`), GNM's inference and generation metrics (:mod:`.gnm`), the mean
log-likelihood (:mod:`.likelihood`), their plots (:mod:`.plots`) and held-out batches
(:mod:`.data`). ``python -m inference.evaluate`` runs them on a trained run (docs/metrics.md).
"""
