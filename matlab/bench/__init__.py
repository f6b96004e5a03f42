"""Benchmarks: the slicer against a naive baseline and the copy floor; elastic sweeps."""
