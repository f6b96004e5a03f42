"""Check slice configs against a base architecture, collecting every problem at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from matlab.architecture import ArchFacts, bundled_arch_names, facts_from_arch
from matlab.errors import SliceConfigError
from matlab.runs import layer_spans
from matlab.slice_config import SliceConfig, load_slice_config


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or doubtful) with one slice config."""

    source: str
    field: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.source}: {self.field}: {self.message}"


def _check_skips(config: SliceConfig, facts: ArchFacts, source: str) -> list[Problem]:
    problems = []
    out_of_range = [layer for layer in config.layers_skipped if layer >= facts.num_layers]
    for layer in out_of_range:
        problems.append(Problem(source, f"layers_skipped (layer {layer})",
                                f"out of range; {facts.name} has layers 0..{facts.num_layers - 1}"))
    skipped = set(config.layers_skipped)
    if len(skipped - set(out_of_range)) >= facts.num_layers:
        problems.append(Problem(source, "layers_skipped", f"skips all {facts.num_layers} layers; keep at least one"))
        return problems
    consumers_by_type: dict[str, list[int]] = {}
    for layer in facts.kv_consumers:
        consumers_by_type.setdefault(facts.layer_types[layer], []).append(layer)
    for layer_type, producer in facts.kv_producers.items():
        if producer in skipped:
            readers = layer_spans(consumers_by_type.get(layer_type, []))
            problems.append(Problem(
                source, f"layers_skipped (layer {producer})",
                f"layer {producer} is the KV producer of the {layer_type} layers {readers} and cannot be "
                f"skipped; remove {producer} from layers_skipped"))
    kept = [layer for layer in range(facts.num_layers) if layer not in skipped]
    kept_types = [facts.layer_types[layer] for layer in kept]
    kept_consumers = [layer for layer in kept if layer in set(facts.kv_consumers)]
    producers, _ = facts.family.kv_roles(kept_types, len(kept_consumers))
    orphaned = sorted({facts.layer_types[layer] for layer in kept_consumers} - set(producers))
    for layer_type in orphaned:
        readers = [layer for layer in kept_consumers if facts.layer_types[layer] == layer_type]
        problems.append(Problem(
            source, "layers_skipped",
            f"no {layer_type} layer is left before the KV-shared region to produce KV for layers "
            f"{layer_spans(readers)}; keep a {layer_type} layer before layer {facts.kv_consumers[0]}"))
    return problems


def _check_widths(config: SliceConfig, facts: ArchFacts, source: str) -> list[Problem]:
    skipped = set(config.layers_skipped)
    kept = [layer for layer in range(facts.num_layers) if layer not in skipped]
    widths = config.widths_for(len(kept))
    if len(widths) != len(kept):
        return [Problem(source, "ffn_widths",
                        f"{len(widths)} widths for {len(kept)} kept layers ({facts.num_layers} layers minus "
                        f"{len(skipped)} skipped); give one width per kept layer")]
    problems = []
    for position, (layer, width) in enumerate(zip(kept, widths)):
        base = facts.ffn_widths[layer]
        where = f"ffn_widths[{position}] (layer {layer})"
        if width > base:
            problems.append(Problem(source, where, f"width {width} exceeds the base width {base}; use at most {base}"))
        elif width not in facts.trained_widths(layer):
            trained = ", ".join(str(w) for w in facts.trained_widths(layer))
            problems.append(Problem(source, where,
                                    f"width {width} was never trained as a granularity (trained: {trained}); "
                                    "the submodel may lose quality", severity="warning"))
    return problems


def _check_base(config: SliceConfig, facts: ArchFacts, source: str) -> list[Problem]:
    if config.base is None or config.base == facts.name or config.base not in bundled_arch_names():
        return []
    target = facts_from_arch(config.base)
    shape = (facts.num_layers, facts.ffn_widths, facts.layer_types)
    if (target.num_layers, target.ffn_widths, target.layer_types) == shape:
        return []
    return [Problem(source, "base",
                    f"the config targets {config.base} ({target.num_layers} layers, FFN {max(target.ffn_widths)}) but "
                    f"{facts.name} has {facts.num_layers} layers, FFN {max(facts.ffn_widths)}; "
                    "use a config made for it")]


def check_slice_config(config: SliceConfig, facts: ArchFacts, source: str) -> list[Problem]:
    """Every problem of `config` against `facts`, errors and warnings."""
    return [*_check_base(config, facts, source), *_check_skips(config, facts, source),
            *_check_widths(config, facts, source)]


def check_config_files(paths: list[Path], facts: ArchFacts, runtime: str | None = None) -> dict[Path, list[Problem]]:
    """Load and check each file; a file that does not parse yields one problem naming it. With
    `runtime`, a config that is otherwise valid is also checked against that runtime's rules."""
    from matlab.plan import SlicePlan  # the plan validates with this module
    from matlab.runtimes import check_runtime, runtime_problems

    if runtime:
        check_runtime(runtime)
    report: dict[Path, list[Problem]] = {}
    for path in paths:
        try:
            config = load_slice_config(path)
        except SliceConfigError as error:
            report[path] = [Problem(str(path), "file", str(error).removeprefix(f"{path}: "))]
            continue
        problems = check_slice_config(config, facts, str(path))
        if runtime and not any(problem.severity == "error" for problem in problems):
            problems += runtime_problems(SlicePlan.build(config, facts, str(path)), runtime, str(path))
        report[path] = problems
    return report


def require_valid(config: SliceConfig, facts: ArchFacts, source: str) -> list[Problem]:
    """Raise SliceConfigError listing every error; return the warnings."""
    problems = check_slice_config(config, facts, source)
    errors = [problem for problem in problems if problem.severity == "error"]
    if errors:
        raise SliceConfigError("; ".join(str(problem) for problem in errors))
    return [problem for problem in problems if problem.severity == "warning"]
