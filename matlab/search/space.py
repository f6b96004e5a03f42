"""The search space: genes for skips, widths and weight formats, decoded into validated, costed candidates.

Genes are chosen so that the space holds what the runtime was measured to run
(`matlab.runtimes`): one skip gene per layer, none for the layers the runtime cannot lose (KV
producers; for llama.cpp every layer before the shared region), and a runtime that builds
every layer at one width gets one width gene. Every decoded candidate is still checked by the same
code as `matformer validate --runtime`, and none that fails is evaluated.

With `formats` (`search --formats`), every layer gets format genes, as a GGUF file types its
tensors: one for its attention projections and one for its FFN (`format_genes="group"`), or
one for both (`"layer"`); the token embedding and the per-layer embedding table get one each;
the small tensors (LAuReL, AltUp, per-layer gates and projections) take the widest format
offered. A candidate's bytes are then those of its GGUF file (`matlab.plan.tensor_formats`), block
scales and llama.cpp's F32/F16 choices included.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from matlab.arch.facts import ArchFacts
from matlab.arch.inventory import Inventory
from matlab.core.loading import LoadedModel
from matlab.core.submodel import deployed_weight_bytes
from matlab.errors import InputError
from matlab.formats import FORMATS, block_size, check_format
from matlab.plan import SlicePlan
from matlab.plan.accounting import count_parameters
from matlab.plan.tensor_formats import format_cost
from matlab.runtimes import RUNTIMES, has_rule, runtime_violations
from matlab.slice_config import SliceConfig
from matlab.slice_config.validation import check_slice_config
from matlab.slice_config.weight_formats import LayerFormats, WeightFormats


def check_search_formats(formats: tuple[str, ...], widths: tuple[int, ...], runtime: str | None) -> tuple[str, ...]:
    """`--formats` as the space uses them (widest first), or InputError: an unknown format, one the
    runtime does not load, or a width whose down projection would split that format's blocks."""
    try:
        checked = tuple(sorted({check_format(fmt) for fmt in formats}, key=FORMATS.index))
    except ValueError as error:
        raise InputError(f"--formats: {error}") from None
    if runtime is not None:
        loads = RUNTIMES[runtime].formats
        refused = [fmt for fmt in checked if fmt not in loads]
        if refused:
            raise InputError(f"--formats: {runtime} does not load {', '.join(refused)} (it loads "
                             f"{', '.join(loads)}: {RUNTIMES[runtime].layout.name}); drop them, or search for "
                             "llama.cpp or ollama, which load GGUF files")
    for fmt in checked:
        off = [width for width in widths if width % block_size(fmt)]
        if off:
            raise InputError(f"--formats {fmt} with --widths {', '.join(map(str, off))}: a down projection of that "
                             f"width is not whole {fmt} blocks of {block_size(fmt)}; use widths that are multiples "
                             f"of {block_size(fmt)}")
    return checked


@dataclass(frozen=True)
class Candidate:
    """One decoded point of the space, with its validity and cost."""

    layers_skipped: tuple[int, ...]
    ffn_widths: tuple[int, ...]  # one per kept layer
    submodel_id: str
    problems: tuple[str, ...]  # why it is not a valid (or loadable) slice; empty if it is
    effective_params: int
    weight_bytes: int  # at the run dtype, or with formats those of the GGUF file
    weight_formats: WeightFormats | None = None

    @property
    def valid(self) -> bool:
        return not self.problems

    def config(self, name: str = "candidate", **fields) -> SliceConfig:
        return SliceConfig(name=name, layers_skipped=self.layers_skipped, ffn_widths=self.ffn_widths,
                           weight_formats=self.weight_formats, **fields)


@dataclass(frozen=True)
class Budget:
    max_params: int | None = None
    max_bytes: int | None = None

    def excess(self, candidate: Candidate) -> float:
        """How far over budget, as the largest relative excess (<= 0: within budget)."""
        excesses = [candidate.effective_params / self.max_params - 1 if self.max_params else -1.0,
                    candidate.weight_bytes / self.max_bytes - 1 if self.max_bytes else -1.0]
        return max(excesses)

    def cost(self, candidate: Candidate) -> int:
        """The frontier's cost axis: effective parameters if they are budgeted, else bytes."""
        return candidate.effective_params if self.max_params else candidate.weight_bytes


FORMAT_GENES = ("group", "layer")
EMBEDDINGS_GENE, PLE_GENE = "format_embeddings", "format_ple"


class SearchSpace:
    """Genes -> candidates for one loaded model, runtime and set of allowed widths (and formats)."""

    def __init__(self, checkpoint_facts: ArchFacts, inventory: Inventory, loaded: LoadedModel,
                 widths: tuple[int, ...] | None, runtime: str | None, formats: tuple[str, ...] | None = None,
                 format_genes: str = "group", skips: bool = True):
        self.facts, self.inventory, self.loaded, self.runtime = checkpoint_facts, inventory, loaded, runtime
        base = max(checkpoint_facts.ffn_widths)
        self.widths = tuple(sorted(set(widths or checkpoint_facts.family.trained_widths(base)), reverse=True))
        if self.widths[0] > base or self.widths[-1] <= 0:
            raise InputError(f"--widths: each width must be between 1 and the base width {base}; "
                             f"got {', '.join(map(str, self.widths))}")
        self.formats = check_search_formats(formats, self.widths, runtime) if formats else ()
        if format_genes not in FORMAT_GENES:
            raise InputError(f"--format-genes {format_genes}: choose one of {', '.join(FORMAT_GENES)}")
        self.format_genes = format_genes
        self.uniform = runtime is not None and has_rule(runtime, "uniform-width")
        self.skip_groups = self._skip_groups() if skips else ()
        self.width_groups = ((tuple(range(checkpoint_facts.num_layers)),) if self.uniform
                             else tuple((layer,) for layer in range(checkpoint_facts.num_layers)))
        self._cache: dict[tuple, Candidate] = {}

    def _skip_groups(self) -> tuple[tuple[int, ...], ...]:
        facts = self.facts
        fixed = set(facts.kv_producers.values())
        first_shared = facts.kv_consumers[0] if facts.kv_consumers else facts.num_layers
        if self.runtime is not None and has_rule(self.runtime, "kv-prefix"):
            fixed |= set(range(first_shared))
        return tuple((layer,) for layer in range(facts.num_layers) if layer not in fixed)

    @cached_property
    def gene_names(self) -> list[str]:
        names = [f"skip_{group[0]}" for group in self.skip_groups] + \
            [f"width_{group[0]}" if len(group) == 1 else "width" for group in self.width_groups]
        if self.formats:
            layers = range(self.facts.num_layers)
            per_layer = [f"format_{layer}" for layer in layers] if self.format_genes == "layer" else \
                [gene for layer in layers for gene in (f"format_attention_{layer}", f"format_ffn_{layer}")]
            names += [EMBEDDINGS_GENE, PLE_GENE, *per_layer]
        return names

    def choices(self, gene: str) -> tuple:
        """A gene's values, from the largest model's to the smallest's."""
        if gene.startswith("skip_"):
            return (0, 1)
        return self.formats if gene.startswith("format_") else self.widths

    def narrower(self, gene: str, value) -> object | None:
        """The next value of a width or format gene toward the smaller model (None at the end)."""
        choices = self.choices(gene)
        position = choices.index(value)
        return choices[position + 1] if position + 1 < len(choices) else None

    @cached_property
    def full_genes(self) -> dict[str, object]:
        """The genes of the largest point: nothing skipped, the widest allowed width and format."""
        return {gene: self.choices(gene)[0] for gene in self.gene_names}

    def decode(self, genes: dict[str, object]) -> Candidate:
        skipped = sorted(layer for group in self.skip_groups if genes[f"skip_{group[0]}"] for layer in group)
        width_of = {}
        for group in self.width_groups:
            width = genes["width" if len(group) > 1 else f"width_{group[0]}"]
            width_of.update({layer: min(width, self.facts.ffn_widths[layer]) for layer in group})
        kept = [layer for layer in range(self.facts.num_layers) if layer not in set(skipped)]
        return self.candidate(tuple(skipped), tuple(width_of[layer] for layer in kept), self._formats(genes, kept))

    def _formats(self, genes: dict[str, object], kept: list[int]) -> WeightFormats | None:
        if not self.formats:
            return None
        if self.format_genes == "layer":
            layers = tuple(LayerFormats(attention=genes[f"format_{layer}"], ffn=genes[f"format_{layer}"])
                           for layer in kept)
        else:
            layers = tuple(LayerFormats(attention=genes[f"format_attention_{layer}"], ffn=genes[f"format_ffn_{layer}"])
                           for layer in kept)
        return WeightFormats(default=self.formats[0], embeddings=genes[EMBEDDINGS_GENE],
                             per_layer_embeddings=genes[PLE_GENE], layers=layers)

    def candidate(self, layers_skipped: tuple[int, ...], ffn_widths: tuple[int, ...],
                  weight_formats: WeightFormats | None = None) -> Candidate:
        """Validate and cost one submodel (cached by its spelling)."""
        key = (layers_skipped, ffn_widths, weight_formats)
        if key not in self._cache:
            self._cache[key] = self._build(layers_skipped, ffn_widths, weight_formats)
        return self._cache[key]

    def _build(self, layers_skipped: tuple[int, ...], ffn_widths: tuple[int, ...],
               weight_formats: WeightFormats | None) -> Candidate:
        config = SliceConfig(name="candidate", layers_skipped=layers_skipped, ffn_widths=ffn_widths,
                             weight_formats=weight_formats)
        problems = [str(p) for p in check_slice_config(config, self.facts, "candidate") if p.severity == "error"]
        if problems:
            return Candidate(layers_skipped, ffn_widths, "", tuple(problems), 0, 0, weight_formats)
        plan = SlicePlan.build(config, self.facts, "candidate")
        problems = [str(v) for v in runtime_violations(plan, self.runtime)] if self.runtime else []
        params = count_parameters(self.inventory, self.facts, plan, text_only=True).effective_params
        if weight_formats is None:
            weight_bytes, _ = deployed_weight_bytes(self.loaded, self.text_plan(config))
        else:
            weight_bytes = format_cost(plan, self.inventory).total_bytes
        return Candidate(layers_skipped, ffn_widths, plan.submodel_id, tuple(problems), params, weight_bytes,
                         weight_formats)

    def text_plan(self, config: SliceConfig) -> SlicePlan:
        """The plan on the loaded (text-only) model, for building the elastic submodel."""
        return SlicePlan.build(config, self.loaded.facts, config.name)

    def smallest(self) -> Candidate:
        """Every skippable group skipped, the narrowest width and format everywhere."""
        return self.decode({gene: self.choices(gene)[-1] for gene in self.gene_names})

    def check_runtime_can_load_base(self) -> None:
        """A runtime whose fixed assumptions no slice of this base can meet is bad input."""
        full = self.decode(self.full_genes)
        if full.problems:
            raise InputError(f"--runtime {self.runtime}: no slice of {self.facts.name} can run there: "
                             f"{full.problems[0]}")

    def runtime_warnings(self) -> list[str]:
        """A runtime whose "runs" is expected from its source, not measured, says so."""
        facts = RUNTIMES.get(self.runtime) if self.runtime else None
        if facts is None or facts.measured:
            return []
        return [f"--runtime {self.runtime}: no conformance run has confirmed that {self.runtime} ({facts.version}) "
                "computes these slices right; its rules are read from its source (docs/runtimes.md)"]

    def width_warnings(self) -> list[str]:
        """Allowed widths that are no trained granularity of some layer (allowed, as `validate` allows them)."""
        trained = {width for layer in range(self.facts.num_layers) for width in self.facts.trained_widths(layer)}
        return [f"--widths: width {width} was never trained as a granularity (trained: "
                f"{', '.join(map(str, sorted(trained, reverse=True)))}); submodels using it may lose quality"
                for width in self.widths if width not in trained]
