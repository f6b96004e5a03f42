"""Check slice configs against a base architecture, collecting every problem at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from matlab.arch.facts import ArchFacts, bundled_arch_names, facts_from_arch
from matlab.errors import SliceConfigError
from matlab.formats import FLOAT_FORMATS, block_size
from matlab.slice_config import SliceConfig
from matlab.slice_config.fields import SHOWN_ITEMS, first_few
from matlab.util.runs import layer_spans


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
    layer_count, layer_types, consumers = facts.num_layers, facts.layer_types, facts.kv_consumers
    out_of_range = [layer for layer in config.layers_skipped if layer >= layer_count]
    beyond = f"out of range; {facts.name} has layers 0..{layer_count - 1}"
    if len(out_of_range) > SHOWN_ITEMS:  # one line for ten thousand, not ten thousand lines
        problems.append(Problem(source, f"layers_skipped (layers {first_few(out_of_range)})", beyond))
    else:
        problems += [Problem(source, f"layers_skipped (layer {layer})", beyond) for layer in out_of_range]
    skipped = set(config.layers_skipped)
    if len(skipped) - len(out_of_range) >= layer_count:
        problems.append(Problem(source, "layers_skipped", f"skips all {layer_count} layers; keep at least one"))
        return problems
    consumers_by_type: dict[str, list[int]] = {}
    for layer in consumers:
        consumers_by_type.setdefault(layer_types[layer], []).append(layer)
    for layer_type, producer in facts.kv_producers.items():
        if producer in skipped:
            readers = layer_spans(consumers_by_type.get(layer_type, []))
            problems.append(Problem(
                source, f"layers_skipped (layer {producer})",
                f"layer {producer} is the KV producer of the {layer_type} layers {readers} and cannot be "
                f"skipped; remove {producer} from layers_skipped"))
    kept = [layer for layer in range(layer_count) if layer not in skipped]
    kept_types = [layer_types[layer] for layer in kept]
    consumer_set = set(consumers)
    kept_consumers = [layer for layer in kept if layer in consumer_set]
    producers, _ = facts.family.kv_roles(kept_types, len(kept_consumers))
    orphaned = sorted({layer_types[layer] for layer in kept_consumers} - set(producers))
    for layer_type in orphaned:
        readers = [layer for layer in kept_consumers if layer_types[layer] == layer_type]
        problems.append(Problem(
            source, "layers_skipped",
            f"no {layer_type} layer is left before the KV-shared region to produce KV for layers "
            f"{layer_spans(readers)}; keep a {layer_type} layer before layer {consumers[0]}"))
    return problems


def _check_widths(config: SliceConfig, facts: ArchFacts, source: str) -> list[Problem]:
    skipped = set(config.layers_skipped)
    kept = [layer for layer in range(facts.num_layers) if layer not in skipped]
    widths = config.widths_for(len(kept))
    if len(widths) != len(kept):
        return [Problem(source, "ffn_widths",
                        f"{len(widths)} widths for {len(kept)} kept layers ({facts.num_layers} layers minus "
                        f"{len(skipped)} skipped); give one width per kept layer")]
    too_wide: list[tuple[int, int, str]] = []  # (position, layer, message)
    untrained: list[tuple[int, int, str]] = []
    base_widths = facts.ffn_widths
    for position, (layer, width) in enumerate(zip(kept, widths)):
        base, trained = base_widths[layer], facts.family.trained_widths(base_widths[layer])
        if width > base:
            too_wide.append((position, layer, f"width {width} exceeds the base width {base}; use at most {base}"))
        elif width not in trained:
            untrained.append((position, layer, f"width {width} was never trained as a granularity (trained: "
                                               f"{', '.join(str(w) for w in trained)}); the submodel may lose quality"))
    problems = []
    for found, severity in ((too_wide, "error"), (untrained, "warning")):
        if len(found) > SHOWN_ITEMS:  # one line for many layers, naming the first in full
            _, layer, message = found[0]
            problems.append(Problem(source, f"ffn_widths (layers {first_few([item[1] for item in found])})",
                                    f"{len(found)} kept layers, first layer {layer}: {message}", severity))
        else:
            problems += [Problem(source, f"ffn_widths[{position}] (layer {layer})", message, severity)
                         for position, layer, message in found]
    return problems


def _check_formats(config: SliceConfig, facts: ArchFacts, source: str) -> list[Problem]:
    """`weight_formats` against the kept layers: one entry per kept layer (list form), no entry
    for a skipped or missing layer (mapping form), and each FFN width whole blocks of its
    layer's FFN format where the family cuts a FFN tensor along its rows' blocks (Gemma 3n's
    down projection, whose rows are the FFN width)."""
    formats = config.weight_formats
    if formats is None or formats.preset is not None:  # a preset falls back where rows are off its blocks
        return []
    skipped = set(config.layers_skipped)
    kept = [layer for layer in range(facts.num_layers) if layer not in skipped]
    widths = config.widths_for(len(kept))
    if isinstance(formats.layers, tuple) and len(formats.layers) != len(kept):
        return [Problem(source, "weight_formats.layers",
                        f"{len(formats.layers)} entries for {len(kept)} kept layers; give one entry per kept layer, "
                        "as ffn_widths does, or map layer indexes to entries")]
    problems = []
    named = sorted(formats.layers) if isinstance(formats.layers, dict) else []
    beyond = [layer for layer in named if layer >= facts.num_layers]
    for found, message in ((beyond, f"out of range; {facts.name} has layers 0..{facts.num_layers - 1}"),
                           ([layer for layer in named if layer in skipped],
                            "skipped (layers_skipped), so it stores no weights; remove its entry or keep the layer")):
        if len(found) > SHOWN_ITEMS:  # one line for ten thousand, not ten thousand lines
            problems.append(Problem(source, f"weight_formats.layers (layers {first_few(found)})", message))
        else:
            problems += [Problem(source, f"weight_formats.layers (layer {layer})",
                                 message if layer in beyond else f"layer {layer} is {message}") for layer in found]
    if problems or len(widths) != len(kept) or not any(axis == 1 for axis in facts.family.ffn_cuts.values()):
        return problems
    off_block: list[tuple[str, int, str]] = []  # (field, layer, message)
    for position, (layer, width, layer_formats) in enumerate(zip(kept, widths, formats.for_layers(kept))):
        block = block_size(layer_formats.ffn)
        if width % block:
            off_block.append((_ffn_format_field(config, position, layer), layer,
                              f"FFN width {width} (ffn_widths[{position}]) is not a multiple of {layer_formats.ffn}'s "
                              f"block of {block}: the down projection's rows are the FFN width and are stored as "
                              f"whole blocks; use a multiple of {block} or a float FFN format "
                              f"({', '.join(FLOAT_FORMATS)})"))
    if len(off_block) > SHOWN_ITEMS:
        field, layer, message = off_block[0]
        return [Problem(source, f"weight_formats (layers {first_few([item[1] for item in off_block])})",
                        f"{len(off_block)} kept layers, first layer {layer} ({field}): {message}")]
    return [Problem(source, f"{field} (layer {layer})", message) for field, layer, message in off_block]


def _ffn_format_field(config: SliceConfig, position: int, layer: int) -> str:
    """The field that gives kept layer `layer` (at `position`) its FFN format."""
    layers = config.weight_formats.layers
    if isinstance(layers, tuple) and layers[position].ffn:
        return f"weight_formats.layers[{position}]"
    if isinstance(layers, dict) and layer in layers and layers[layer].ffn:
        return f"weight_formats.layers.{layer}"
    return "weight_formats.default"


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
            *_check_widths(config, facts, source), *_check_formats(config, facts, source)]


def require_valid(config: SliceConfig, facts: ArchFacts, source: str) -> list[Problem]:
    """Raise SliceConfigError listing every error; return the warnings."""
    problems = check_slice_config(config, facts, source)
    errors = [problem for problem in problems if problem.severity == "error"]
    if errors:
        raise SliceConfigError("; ".join(str(problem) for problem in errors))
    return [problem for problem in problems if problem.severity == "warning"]
