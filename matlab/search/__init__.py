"""Budgeted Mix-n-Match search: the Pareto set of slices over (cost, objective) under a budget.

`space` (genes, validity, cost), `objective` (KL to the full model or perplexity on
calibration text), `journal` (the run directory: every evaluated candidate, resumable),
`algorithm` (sensitivity-seeded NSGA-II), `run` (the whole search).
"""
