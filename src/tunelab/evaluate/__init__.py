"""Evaluation: generation, label parsing, metrics, paired statistics."""
