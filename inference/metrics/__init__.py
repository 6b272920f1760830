"""Evaluation metrics of the papers (see docs/metrics.md)."""
