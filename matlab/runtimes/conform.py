"""Run a written slice in a real runtime and compare its next-token log-probs with transformers'.

Loading is not running: a runtime can load a slice and compute another model (vLLM's text-only
class, mlx-vlm's KV-shared positions). So the verdict comes from log-probs on the same tokens:
both sides run as child processes (`runners/`, protocol in its `__init__`), the runtime in its
own environment, so a runtime that aborts its process (llama.cpp's asserts) is reported, not
fatal. Verdicts: runs, computes another model, refuses to load, crashes.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from matlab.arch.facts import read_config_json
from matlab.errors import CheckpointError, InputError, MatformerError
from matlab.runtimes import RUNTIMES, conformance_runtimes
from matlab.runtimes.base import ANOTHER_MODEL, CRASHES, REFUSES, RUNNERS, RUNS
from matlab.runtimes.envs import installed_versions, interpreter
from matlab.runtimes.gguf import (
    PER_TENSOR,
    ConversionError,
    check_gguf_type,
    convert_to_gguf,
    last_error_line,
    recorded_tensor_formats,
)

__all__ = ["ANOTHER_MODEL", "CRASHES", "Conformance", "REFUSES", "RUNS", "Runner", "conform", "runner_for",
           "runtime_distributions"]

# Largest max-abs log-prob difference (over the runtime's top-K) still called "runs", by the
# precision the runtime computes in. Measured (reports/runtimes.md): right answers differ by
# <= 1e-5 (vLLM, mlx-lm in f32), 0.002-0.010 (llama.cpp f32, whose sparsity std divides by
# n-1), 0.03-0.05 (Q8_0), ~0.1 (Q4_K_M), 0.04-0.08 (mlx in bf16); wrong ones by 1.3 to 5.
TOLERANCE = {"f32": 0.05, "f16": 0.1, "bf16": 0.25, "q8_0": 0.15, "q6_k": 0.3, "q5_k_m": 0.4, "q5_1": 0.5,
             "q5_0": 0.5, "q4_k_m": 0.6, "q4_1": 0.8, "q4_0": 0.8}
DTYPE_TYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class Runner:
    """One runtime's child program: the interpreter that runs it, and its environment."""

    runtime: str
    python: Path
    script: Path
    variables: dict[str, str] = field(default_factory=dict)


def runner_for(runtime: str) -> Runner:
    """The installed runner of `runtime` (InputError with the install command if it is not)."""
    if runtime not in conformance_runtimes():
        reason = RUNTIMES[runtime].unavailable if runtime in RUNTIMES else ""
        raise InputError(f"--runtime {runtime}: no conformance runner{f' ({reason})' if reason else ''}; choose one "
                         f"of {', '.join(conformance_runtimes())}")
    record = RUNTIMES[runtime]
    variables = dict(record.environment.variables) if record.environment else {}
    return Runner(runtime, interpreter(runtime), RUNNERS / record.runner, variables)


@dataclass(frozen=True)
class Conformance:
    """What one runtime did with one model, compared with transformers on the same tokens."""

    runtime: str
    version: str
    model: str
    weight_type: str
    verdict: str
    message: str  # the runtime's own words where it failed; the numbers where it ran
    max_abs_diff: float | None = None
    top1_agree: int | None = None
    positions: int = 0
    tolerance: float | None = None
    reference_version: str = ""

    @property
    def runs(self) -> bool:
        return self.verdict == RUNS

    def line(self) -> str:
        numbers = (f"max |d log p| {self.max_abs_diff:.2g} over the top tokens, top-1 agrees "
                   f"{self.top1_agree}/{self.positions}; " if self.max_abs_diff is not None else "")
        return f"{self.runtime} {self.version} ({self.weight_type}): {self.verdict}: {numbers}{self.message}"

    def as_dict(self) -> dict:
        return asdict(self)


def sample_tokens(model: Path, config: dict, count: int, seed: int) -> list[int]:
    """BOS then `count - 1` ids drawn from the vocabulary the per-layer embeddings cover
    (`config`: the model's config.json)."""
    config = _text_part(config)
    vocab = min(int(config.get("vocab_size", 0)), int(config.get("vocab_size_per_layer_input") or 2**31))
    if vocab <= 8:
        raise CheckpointError(f"{model / 'config.json'}: vocab_size {vocab} is too small to sample tokens from")
    generator = random.Random(seed)
    bos = config.get("bos_token_id")
    first = bos if isinstance(bos, int) and 0 <= bos < vocab else 0
    return [first] + [generator.randrange(4, vocab) for _ in range(count - 1)]


def stored_type(config: dict) -> str:
    """The weight type a runtime that keeps the stored dtype computes in (`config`: config.json)."""
    dtype = config.get("dtype") or config.get("torch_dtype") or _text_part(config).get("dtype") or "float32"
    return DTYPE_TYPES.get(str(dtype), "f32")


def conform(model: Path, runtime: str, *, weight_type: str | None = None, count: int = 64, top_k: int = 20,
            tolerance: float | None = None, seed: int = 0, timeout: float = 1800,
            runner: Runner | None = None, reference: Runner | None = None) -> Conformance:
    """Run `runtime` on the slice directory `model` and judge it against transformers.

    For llama.cpp the slice is first converted by llama.cpp's own converter (`weight_type`,
    default f32; the K-quants through its quantizer). `runner`/`reference` replace the
    installed runners (tests use fakes)."""
    model = Path(model)
    if not (model / "config.json").is_file():
        raise InputError(f"{model}: no config.json; pass a directory written by `matformer slice`")
    runner = runner or runner_for(runtime)
    reference = reference or runner_for("transformers")
    if runtime == "llama.cpp":
        weight_type = check_gguf_type(weight_type or "f32")
    elif weight_type is not None:
        raise InputError(f"--type {weight_type}: only llama.cpp takes a weight type; {runtime} runs the "
                         "checkpoint as stored")
    config = read_config_json(model)
    weight_type = weight_type or stored_type(config)
    limit = tolerance if tolerance is not None else type_tolerance(model, weight_type)
    tokens = sample_tokens(model, config, count, seed)
    with tempfile.TemporaryDirectory(prefix="matformer-conform-") as scratch:
        work = Path(scratch)
        target = model
        if runtime == "llama.cpp" and runner.script.name == RUNTIMES["llama.cpp"].runner:
            try:
                target = convert_to_gguf(model.resolve(), work / f"model-{weight_type}.gguf", weight_type, timeout)
            except ConversionError as error:
                return Conformance(runtime, _installed_version(runtime), str(model), weight_type, REFUSES, str(error))
        outcome = _run(runner, target, tokens, top_k, work / "runtime", timeout)
        if "top" not in outcome.result:
            return _failure(runtime, model, weight_type, outcome)
        scored = [[pair[0] for pair in position] for position in outcome.result["top"]]
        expected = _run(reference, model, tokens, top_k, work / "reference", timeout, scored)
        if "top" not in expected.result:
            raise MatformerError(f"{model}: transformers itself cannot run this checkpoint, so there is nothing to "
                                 f"compare with: {expected.result.get('error') or outcome.stderr_line}")
    return _compare(runtime, model, weight_type, outcome, expected, limit)


def runtime_distributions(runner: Runner, model: Path, tokens: list[int], vocab: int, work: Path,
                          timeout: float = 1800) -> list[dict[int, float]]:
    """The runtime's next-token log-probs at every position, over the whole vocabulary (its
    runner asked for `vocab` top tokens); MatformerError with its own words where it fails."""
    outcome = _run(runner, model, tokens, vocab, work, timeout)
    if "top" not in outcome.result:
        failure = _failure(runner.runtime, model, "", outcome)
        raise MatformerError(f"{runner.runtime} {failure.verdict} on {model}: {failure.message}")
    return [{int(token): float(logprob) for token, logprob in position} for position in outcome.result["top"]]


@dataclass(frozen=True)
class _Outcome:
    returncode: int
    result: dict
    stderr_line: str


def _run(runner: Runner, model: Path, tokens: list[int], top_k: int, work: Path, timeout: float,
         scored: list[list[int]] | None = None) -> _Outcome:
    work.mkdir()
    (work / "tokens.json").write_text(json.dumps({"tokens": tokens}), encoding="utf-8")
    # The child runs in `work`: a path relative to this process's folder would name another file there.
    command = [str(runner.python), str(runner.script), "--model", str(Path(model).resolve()), "--tokens",
               str(work / "tokens.json"),
               "--out", str(work / "result.json"), "--top-k", str(top_k)]
    if scored is not None:
        (work / "score.json").write_text(json.dumps({"ids": scored}), encoding="utf-8")
        command += ["--score", str(work / "score.json")]
    with open(work / "stderr.txt", "w+", encoding="utf-8", errors="replace") as stderr:
        try:
            finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=stderr, timeout=timeout,
                                      env={**os.environ, **runner.variables}, cwd=work)
            returncode = finished.returncode
        except subprocess.TimeoutExpired:
            returncode = None
        stderr.seek(0)
        tail = last_error_line(stderr.read()[-20000:])
    if returncode is None:
        return _Outcome(-1, {"error": f"no answer within {timeout:.0f} s"}, tail)
    try:
        result = json.loads((work / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = {}
    return _Outcome(returncode, result if isinstance(result, dict) else {}, tail)


def _failure(runtime: str, model: Path, weight_type: str, outcome: _Outcome) -> Conformance:
    version = str(outcome.result.get("version") or _installed_version(runtime))
    if outcome.result.get("stage") == "load":
        return Conformance(runtime, version, str(model), weight_type, REFUSES, str(outcome.result.get("error")))
    if outcome.returncode < 0:
        cause = f"killed by signal {-outcome.returncode}"
    else:
        cause = f"exit {outcome.returncode}"
    words = outcome.result.get("error") or outcome.stderr_line
    return Conformance(runtime, version, str(model), weight_type, CRASHES, f"{cause}: {words}")


def _compare(runtime: str, model: Path, weight_type: str, outcome: _Outcome, expected: _Outcome,
             limit: float) -> Conformance:
    got, want = outcome.result["top"], expected.result["top"]
    scored = expected.result.get("scored")
    if len(got) != len(want) or not scored or len(scored) != len(got):
        raise MatformerError(f"{runtime}: its runner answered {len(got)} positions, the reference {len(want)}")
    differences = [abs(pair[1] - reference) for position, references in zip(got, scored, strict=True)
                   for pair, reference in zip(position, references, strict=True)]
    agree = sum(position[0][0] == reference[0][0] for position, reference in zip(got, want, strict=True))
    largest = max(differences)
    verdict = RUNS if largest <= limit else ANOTHER_MODEL
    message = (f"within {limit:g} of transformers" if verdict == RUNS else
               f"loads, but its log-probs differ from transformers' by up to {largest:.3g} (tolerance {limit:g})")
    return Conformance(runtime, str(outcome.result.get("version", "?")), str(model), weight_type, verdict, message,
                       largest, agree, len(got), limit, str(expected.result.get("version", "?")))


def type_tolerance(model: Path, weight_type: str) -> float:
    """The tolerance of a weight type; for a type per tensor (`per-tensor`), the loosest of those used."""
    if weight_type != PER_TENSOR:
        return TOLERANCE[weight_type]
    return max(TOLERANCE[tensor.format] for tensor in recorded_tensor_formats(model) if len(tensor.shape) > 1)


def _installed_version(runtime: str) -> str:
    record = installed_versions().get(runtime, {}).get("versions", {})
    if runtime not in RUNTIMES:  # a runner handed in (tests' fakes) for no registered runtime
        return "?"
    name = RUNTIMES[runtime].package
    return str(record.get(name) or record.get(name.replace("-", "_")) or "?")


def _text_part(config: dict) -> dict:
    text = config.get("text_config", config)
    return text if isinstance(text, dict) else config
