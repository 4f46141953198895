"""Evaluation: classification metrics, the run report (plots, per-class table, transfer gain) and
transferability scores that rank backbones before fine-tuning."""
