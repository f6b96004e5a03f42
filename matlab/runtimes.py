"""Which runtimes can load a sliced Gemma 3n: each runtime's assumptions as rules on a plan.

Read from each runtime's own source (as of late 2025); every rule is derived from the base
config (its KV producers, KV-shared region and attention period), not from E4B constants:

- transformers (`models/gemma3n/modeling_gemma3n.py`, >= 4.53): per-layer widths and skips,
  given the per-layer lists the slicer rewrites. No rule.
- mlx-lm (`mlx_lm/models/gemma3n.py`, since PR 332): per-layer widths; KV producers derived
  from `layer_types` and `num_kv_shared_layers`. No rule.
- vLLM (`vllm/model_executor/models/gemma3n.py`): a KV-shared layer reads the cache of layer
  `first_kv_shared_layer_idx - 2` (sliding) or `- 1` (full), hard-coded.
- mlx-vlm (`mlx_vlm/models/gemma3n/language.py`): every layer is built with
  `intermediate_size[0]`.
- llama.cpp (`conversion/gemma.py` Gemma3NModel; the gemma3n loader and `gemma3n-iswa.cpp`):
  tensors are created with layer 0's `n_ff`; `n_layer_kv_from_start = 20` is hard-coded (the
  converted `shared_kv_layers` is not read), KV sources are `n_layer_kv_from_start - 2 / - 1`;
  the sliding pattern is one period (`set_swa_pattern(5)`); sparsity is hard-coded on the first
  10 layers.
- Ollama (`convert/convert_gemma3n.go`, `model/models/gemma3n/model_text.go`): the converter
  declares `IntermediateSize uint32`, so a list-valued `intermediate_size` fails to import
  (ollama issue 11615) and a uniform slice must state it as a scalar (`slice --runtime
  ollama`); KV sources are `firstSharedKeyValue - 2 / - 1`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from matlab.errors import InputError, SliceConfigError
from matlab.plan import SlicePlan
from matlab.runs import layer_spans
from matlab.validation import Problem

RUNTIMES = ("transformers", "vllm", "mlx-lm", "mlx-vlm", "llama.cpp", "ollama")
SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True)
class Violation:
    """One runtime assumption a plan breaks."""

    runtime: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.runtime}: {self.rule}: {self.message}"


def _uniform_width(plan: SlicePlan) -> str | None:
    widths = sorted(set(plan.ffn_widths))
    if len(widths) > 1:
        return (f"every layer is built with layer 0's FFN width, but this slice mixes widths "
                f"{', '.join(map(str, widths))}; use one width for every kept layer")
    return None


def _producers_last(plan: SlicePlan) -> str | None:
    """The KV-shared layers read the cache of the last two layers before them, taken to be a
    sliding then a full attention layer."""
    facts = plan.facts
    if not facts.kv_consumers:
        return None
    consumers = set(facts.kv_consumers)
    before = [layer for layer in plan.kept_layers if layer not in consumers]
    types = [facts.layer_types[layer] for layer in before[-2:]]
    if types != [SLIDING, FULL]:
        return (f"KV-shared layers read the cache of the last two layers before them, which must be a sliding "
                f"then a full attention layer; here they are layers {before[-2:]} ({', '.join(types)})")
    return None


def _prefix_kept(plan: SlicePlan) -> str | None:
    """llama.cpp hard-codes the number of layers before the KV-shared region (E4B: 20) and the
    sparse layers among them, so all of them must stay."""
    facts = plan.facts
    first_shared = facts.kv_consumers[0] if facts.kv_consumers else facts.num_layers
    skipped = [layer for layer in plan.config.layers_skipped if layer < first_shared]
    if skipped:
        return (f"the {first_shared} layers before the KV-shared region are hard-coded (and the sparse layers "
                f"among them), so none can be skipped; keep layer(s) {layer_spans(skipped)}")
    return None


def attention_period(plan: SlicePlan) -> int:
    """The base's sliding/full period: the distance from one full-attention layer to the next."""
    full = [layer for layer, kind in enumerate(plan.facts.layer_types) if kind == FULL]
    return full[1] - full[0] if len(full) > 1 else plan.facts.num_layers


def _aligned_blocks(plan: SlicePlan) -> str | None:
    """llama.cpp derives sliding/full from one period, so only whole aligned periods of the
    KV-shared region may be skipped."""
    facts = plan.facts
    if not facts.kv_consumers:
        return None
    period, first_shared = attention_period(plan), facts.kv_consumers[0]
    skipped = set(plan.config.layers_skipped)
    starts = sorted({first_shared + (layer - first_shared) // period * period for layer in skipped
                     if layer >= first_shared})
    broken = [start for start in starts
              if not all(layer in skipped for layer in range(start, min(start + period, facts.num_layers)))]
    if broken:
        blocks = [f"{start}..{min(start + period, facts.num_layers) - 1}" for start in broken]
        return (f"the attention pattern is one period of {period} layers, so skips in the KV-shared region must be "
                f"whole aligned blocks; skip all or none of layers {', '.join(blocks)}")
    return None


Rule = tuple[str, Callable[[SlicePlan], str | None]]
RULES: dict[str, tuple[Rule, ...]] = {
    "transformers": (),
    "mlx-lm": (),
    "vllm": (("kv-sources", _producers_last),),
    "mlx-vlm": (("uniform-width", _uniform_width),),
    "llama.cpp": (("uniform-width", _uniform_width), ("kv-prefix", _prefix_kept), ("aligned-skips", _aligned_blocks),
                  ("kv-sources", _producers_last)),
    "ollama": (("uniform-width", _uniform_width), ("kv-sources", _producers_last)),
}


def check_runtime(runtime: str) -> str:
    """`runtime` itself, or InputError naming the known runtimes."""
    if runtime not in RULES:
        raise InputError(f"--runtime {runtime}: unknown runtime; choose one of {', '.join(RUNTIMES)}")
    return runtime


def runtime_violations(plan: SlicePlan, runtime: str) -> list[Violation]:
    """Every assumption of `runtime` that the sliced model breaks (none: it loads there)."""
    if plan.facts.family.name != "gemma3n":
        raise InputError(f"runtime rules are known for Gemma 3n only, not the {plan.facts.family.name} family")
    return [Violation(runtime, name, message) for name, rule in RULES[check_runtime(runtime)]
            if (message := rule(plan)) is not None]


def runtime_problems(plan: SlicePlan, runtime: str, source: str) -> list[Problem]:
    """The violations of `runtime`'s rules as validation problems, one per rule."""
    return [Problem(source, f"runtime {violation.runtime} ({violation.rule})", violation.message)
            for violation in runtime_violations(plan, runtime)]


def require_runtime(plan: SlicePlan, runtime: str | None, source: str) -> None:
    """Raise SliceConfigError listing every rule of `runtime` the plan breaks."""
    problems = runtime_problems(plan, runtime, source) if runtime else []
    if problems:
        raise SliceConfigError("; ".join(str(problem) for problem in problems))


def runs_in(plan: SlicePlan) -> list[str]:
    """The runtimes that can load this slice (for Gemma 3n; other families: transformers only)."""
    if plan.facts.family.name != "gemma3n":
        return ["transformers"]
    return [runtime for runtime in RUNTIMES if not runtime_violations(plan, runtime)]
