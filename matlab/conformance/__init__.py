"""Conformance: run a written slice in a real runtime and compare its log-probs with transformers'."""
