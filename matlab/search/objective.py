"""The search objective: how far a submodel is from the full model on calibration text.

`kl`: the mean KL divergence, per token, of the submodel's next-token distribution from the
full model's top-k distributions (`matlab.core.calibration`). `perplexity`: the submodel's
perplexity of the same tokens.
"""

from __future__ import annotations

import time

from transformers import PreTrainedModel

from matlab.core.calibration import Calibration, Reference, kl_to_reference, perplexity_of

OBJECTIVES = ("kl", "perplexity")


def measure_candidate(full: PreTrainedModel, plan, calibration: Calibration,
                      reference: Reference | None, weights=None) -> tuple[float, float, float]:
    """(objective, seconds to build the elastic submodel, seconds to evaluate it) of one
    candidate of `full` (`plan` on the full model's text layout): KL to `reference`, or
    perplexity without one. `weights`: the plan's weights at its formats
    (`matlab.core.formatted.formatted_weights`), None for the model's own."""
    from matlab.core.elastic import build_submodel

    started = time.perf_counter()
    submodel = build_submodel(full, plan, weights)
    built = time.perf_counter()
    value = kl_to_reference(submodel, calibration, reference) if reference is not None \
        else perplexity_of(submodel, calibration)
    return value, built - started, time.perf_counter() - built
