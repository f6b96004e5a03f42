"""Evaluation on lm-evaluation-harness, sweeps over slice configs, Pareto analysis, reports."""
