"""The search space: genes for skips and widths, decoded into validated, costed candidates.

Genes are chosen so that the space holds what the runtime was measured to run
(`matlab.runtimes`): one skip gene per layer, none for the layers the runtime cannot lose (KV
producers; for llama.cpp every layer before the shared region), and a runtime that builds
every layer at one width gets one width gene. Every decoded candidate is still checked by the same
code as `matformer validate --runtime`, and none that fails is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from matlab.accounting import count_parameters
from matlab.architecture import ArchFacts
from matlab.core.loading import LoadedModel
from matlab.core.submodel import deployed_weight_bytes
from matlab.errors import InputError
from matlab.inventory import Inventory
from matlab.plan import SlicePlan
from matlab.runtimes import RUNTIME_FACTS, has_rule, runtime_violations
from matlab.slice_config import SliceConfig
from matlab.validation import check_slice_config


@dataclass(frozen=True)
class Candidate:
    """One decoded point of the space, with its validity and cost."""

    layers_skipped: tuple[int, ...]
    ffn_widths: tuple[int, ...]  # one per kept layer
    submodel_id: str
    problems: tuple[str, ...]  # why it is not a valid (or loadable) slice; empty if it is
    effective_params: int
    weight_bytes: int

    @property
    def valid(self) -> bool:
        return not self.problems

    def config(self, name: str = "candidate", **fields) -> SliceConfig:
        return SliceConfig(name=name, layers_skipped=self.layers_skipped, ffn_widths=self.ffn_widths, **fields)


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


class SearchSpace:
    """Genes -> candidates for one loaded model, runtime and set of allowed widths."""

    def __init__(self, checkpoint_facts: ArchFacts, inventory: Inventory, loaded: LoadedModel,
                 widths: tuple[int, ...] | None, runtime: str | None):
        self.facts, self.inventory, self.loaded, self.runtime = checkpoint_facts, inventory, loaded, runtime
        base = max(checkpoint_facts.ffn_widths)
        self.widths = tuple(sorted(set(widths or checkpoint_facts.family.trained_widths(base)), reverse=True))
        if self.widths[0] > base or self.widths[-1] <= 0:
            raise InputError(f"--widths: each width must be between 1 and the base width {base}; "
                             f"got {', '.join(map(str, self.widths))}")
        self.uniform = runtime is not None and has_rule(runtime, "uniform-width")
        self.skip_groups = self._skip_groups()
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

    @property
    def gene_names(self) -> list[str]:
        return [f"skip_{group[0]}" for group in self.skip_groups] + \
            [f"width_{group[0]}" if len(group) == 1 else "width" for group in self.width_groups]

    def choices(self, gene: str) -> tuple[int, ...]:
        return (0, 1) if gene.startswith("skip_") else self.widths

    @cached_property
    def full_genes(self) -> dict[str, int]:
        """The genes of the largest point: nothing skipped, the widest allowed width."""
        return {gene: 0 if gene.startswith("skip_") else self.widths[0] for gene in self.gene_names}

    def decode(self, genes: dict[str, int]) -> Candidate:
        skipped = sorted(layer for group in self.skip_groups if genes[f"skip_{group[0]}"] for layer in group)
        width_of = {}
        for group in self.width_groups:
            width = genes["width" if len(group) > 1 else f"width_{group[0]}"]
            width_of.update({layer: min(width, self.facts.ffn_widths[layer]) for layer in group})
        kept = [layer for layer in range(self.facts.num_layers) if layer not in set(skipped)]
        return self.candidate(tuple(skipped), tuple(width_of[layer] for layer in kept))

    def candidate(self, layers_skipped: tuple[int, ...], ffn_widths: tuple[int, ...]) -> Candidate:
        """Validate and cost one submodel (cached by its spelling)."""
        key = (layers_skipped, ffn_widths)
        if key not in self._cache:
            self._cache[key] = self._build(layers_skipped, ffn_widths)
        return self._cache[key]

    def _build(self, layers_skipped: tuple[int, ...], ffn_widths: tuple[int, ...]) -> Candidate:
        config = SliceConfig(name="candidate", layers_skipped=layers_skipped, ffn_widths=ffn_widths)
        problems = [str(p) for p in check_slice_config(config, self.facts, "candidate") if p.severity == "error"]
        if problems:
            return Candidate(layers_skipped, ffn_widths, "", tuple(problems), 0, 0)
        plan = SlicePlan.build(config, self.facts, "candidate")
        problems = [str(v) for v in runtime_violations(plan, self.runtime)] if self.runtime else []
        params = count_parameters(self.inventory, self.facts, plan, text_only=True).effective_params
        weight_bytes, _ = deployed_weight_bytes(self.loaded, self.text_plan(config))
        return Candidate(layers_skipped, ffn_widths, plan.submodel_id, tuple(problems), params, weight_bytes)

    def text_plan(self, config: SliceConfig) -> SlicePlan:
        """The plan on the loaded (text-only) model, for building the elastic submodel."""
        return SlicePlan.build(config, self.loaded.facts, config.name)

    def smallest(self) -> Candidate:
        """Every skippable group skipped, the narrowest width everywhere."""
        genes = {gene: 1 if gene.startswith("skip_") else self.widths[-1] for gene in self.gene_names}
        return self.decode(genes)

    def check_runtime_can_load_base(self) -> None:
        """A runtime whose fixed assumptions no slice of this base can meet is bad input."""
        full = self.decode(self.full_genes)
        if full.problems:
            raise InputError(f"--runtime {self.runtime}: no slice of {self.facts.name} can run there: "
                             f"{full.problems[0]}")

    def runtime_warnings(self) -> list[str]:
        """A runtime whose "runs" is expected from its source, not measured, says so."""
        facts = RUNTIME_FACTS.get(self.runtime) if self.runtime else None
        if facts is None or facts.measured:
            return []
        return [f"--runtime {self.runtime}: no conformance run has confirmed that {self.runtime} ({facts.version}) "
                "computes these slices right; its rules are read from its source (README, Runtimes)"]

    def width_warnings(self) -> list[str]:
        """Allowed widths that are no trained granularity of some layer (allowed, as `validate` allows them)."""
        trained = {width for layer in range(self.facts.num_layers) for width in self.facts.trained_widths(layer)}
        return [f"--widths: width {width} was never trained as a granularity (trained: "
                f"{', '.join(map(str, sorted(trained, reverse=True)))}); submodels using it may lose quality"
                for width in self.widths if width not in trained]
