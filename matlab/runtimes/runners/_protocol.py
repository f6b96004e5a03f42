"""What every runner shares: its command line, the result file and the exit codes.

Standalone like the runners (numpy and the standard library only); each runner imports it by
putting its own directory on `sys.path`, so it works under `python -I` too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np

Top = list[list[list[float]]]


def log_softmax(logits: Any) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def top_from_logits(logits: Any, top_k: int) -> Top:
    """The K most likely next tokens at every position of a (T, vocab) logit array, as
    [[token_id, log_prob], ...] by log-prob descending, the log-softmax taken in float64."""
    log_probs = log_softmax(logits)
    best = np.argsort(-log_probs, axis=-1, kind="stable")[:, :top_k]
    return [[[int(token), float(row[token])] for token in ids] for row, ids in zip(log_probs, best)]


def error_line(exc: BaseException) -> str:
    """'ExceptionType: message' on one line: the message's non-empty lines joined by spaces."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {' '.join(lines)}" if lines else type(exc).__name__


def installed_version(*distributions: str) -> str:
    """The version of the first of these distributions that is installed."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def run(runtime: str, version: str, load: Callable[[str, int, int], Any],
        compute: Callable[[Any, list[int], int], Top]) -> None:
    """Parse the protocol's command line, load the model and compute its top-K log-probs,
    write RESULT.json and exit 0, 3 (load failed) or 4 (compute failed).

    `load(model_path, n_tokens, top_k)` returns what `compute(model, tokens, top_k)` takes.
    """
    parser = argparse.ArgumentParser(description=f"Run {runtime} on one model (runners protocol).")
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--top-k", type=int, required=True)
    parser.add_argument("--score", help="JSON {\"ids\": [[id, ...] per position]}: also write their log-probs "
                                        "as \"scored\" (the reference runner, whose compute returns logits)")
    args = parser.parse_args()
    with open(args.tokens) as handle:
        tokens = [int(token) for token in json.load(handle)["tokens"]]

    result: dict[str, Any] = {"runtime": runtime, "version": version}
    stage, exit_code = "load", 3
    try:
        model = load(args.model, len(tokens), args.top_k)
        stage, exit_code = "compute", 4
        output = compute(model, tokens, args.top_k)
        if isinstance(output, np.ndarray):  # logits: the top-K, and the asked ids' log-probs
            result["top"] = top_from_logits(output, args.top_k)
            if args.score:
                with open(args.score) as handle:
                    wanted = json.load(handle)["ids"]
                log_probs = log_softmax(output)
                result["scored"] = [[float(row[token]) for token in ids] for row, ids in zip(log_probs, wanted)]
        else:
            result["top"] = output
        exit_code = 0
    except Exception as exc:  # any runtime error is a result, reported with its stage
        result.update(stage=stage, error=error_line(exc))
    with open(args.out, "w") as handle:
        json.dump(result, handle)
    sys.exit(exit_code)
