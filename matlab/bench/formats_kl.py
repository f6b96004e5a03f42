"""Our KL at a slice's weight formats against llama.cpp's on the exported GGUF, for a set of
slices of the E4B-shaped runtime test model (`matformer bench formats-kl`), and with `kquants`
llama.cpp's presets and mixed K-quants on its hidden-256 build, where every weight llama-quantize
quantizes is whole 256-element super-blocks."""

from __future__ import annotations

import tempfile
from pathlib import Path

from matlab.arch.facts import ArchFacts, facts_from_checkpoint
from matlab.bench.gguf_kl import KLComparison, compare_kl
from matlab.formats.presets import PRESETS
from matlab.progress import NO_PROGRESS, Progress
from matlab.runtimes.testmodel import write_runtime_test_model
from matlab.slice_config import SliceConfig, parse_slice_config


def format_cases(facts: ArchFacts) -> list[SliceConfig]:
    """Uniform formats on the full model, each format alone, then formats mixed per tensor group
    on E2B-shaped and skipped slices (llama.cpp runs one FFN width; skips only in the shared region)."""
    base = max(facts.ffn_widths)
    first_shared = facts.kv_consumers[0]
    kept_after_e2b = facts.num_layers - 5
    cases = [{"name": f"unsliced-{fmt}", "ffn_widths": base, "weight_formats": fmt}
             for fmt in ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0")]
    cases += [
        {"name": "e2b-shaped-q4_0-ffn", "layers_skipped": list(range(first_shared, first_shared + 5)),
         "ffn_widths": base // 2, "weight_formats": {"default": "q8_0", "layers": [{"ffn": "q4_0",
                                                                                    "count": kept_after_e2b}]}},
        {"name": "mixed-per-layer", "layers_skipped": [first_shared + 2], "ffn_widths": base // 2,
         "weight_formats": {"default": "q8_0", "per_layer_embeddings": "q4_0", "layers": [
             {"ffn": "q4_0", "count": first_shared}, {"attention": "q5_0", "ffn": "q5_1",
                                                       "count": facts.num_layers - first_shared - 1}]}},
        {"name": "all-q4_0-skips", "layers_skipped": list(range(first_shared + 5, first_shared + 10)),
         "ffn_widths": base // 2, "weight_formats": "q4_0"},
    ]
    return [parse_slice_config(case, "bench formats-kl") for case in cases]


def kquant_cases(facts: ArchFacts) -> list[SliceConfig]:
    """Every llama.cpp preset on the full model and on an E2B-shaped slice, and K-quants mixed
    per tensor group (with a 32-element type among them) on the full model."""
    base = max(facts.ffn_widths)
    first_shared = facts.kv_consumers[0]
    third = facts.num_layers // 3
    cases = [{"name": f"unsliced-{preset}", "ffn_widths": base, "weight_formats": {"preset": preset}}
             for preset in sorted(PRESETS)]
    cases += [{"name": f"e2b-shaped-{preset}", "layers_skipped": list(range(first_shared, first_shared + 5)),
               "ffn_widths": base // 2, "weight_formats": {"preset": preset}} for preset in sorted(PRESETS)]
    cases.append({"name": "mixed-k", "ffn_widths": base, "weight_formats": {
        "default": "q8_0", "embeddings": "q6_k", "per_layer_embeddings": "q4_k", "layers": [
            {"attention": "q4_k", "ffn": "q5_k", "count": third}, {"attention": "q6_k", "ffn": "q3_k", "count": third},
            {"attention": "q2_k", "ffn": "q4_0", "count": facts.num_layers - 2 * third}]}})
    return [parse_slice_config(case, "bench formats-kl") for case in cases]


def bench_formats_kl(checkpoint: Path | None = None, count: int = 64, progress: Progress = NO_PROGRESS,
                     kquants: bool = False) -> tuple[list[KLComparison], str]:
    """Every case's comparison; and the base it ran on."""
    hidden, seed = (256, 3) if kquants else (64, 0)  # seed 3: the K-quant tests' model (tests/test_runtimes_real.py)
    with tempfile.TemporaryDirectory(prefix="matformer-formats-kl-") as scratch:
        work = Path(scratch)
        base = checkpoint or write_runtime_test_model(work / "base", seed=seed, hidden=hidden)
        cases = (kquant_cases if kquants else format_cases)(facts_from_checkpoint(base))
        progress.start(len(cases), description="formats vs llama.cpp")
        results = []
        for number, config in enumerate(cases):
            progress.describe(f"formats vs llama.cpp: {config.name}")
            case_work = work / f"case-{number}"
            case_work.mkdir()
            results.append(compare_kl(base, config, case_work, count=count))
            progress.advance()
    base_name = f"the E4B-shaped runtime test model (hidden {hidden}, seed {seed})"
    return results, str(checkpoint) if checkpoint else base_name
