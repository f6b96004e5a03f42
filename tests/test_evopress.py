"""EvoPress as a search strategy (`--strategy evopress`): its children keep the budget, it is
deterministic and resumes from its journal, it never evaluates outside the budget, and every
strategy's first evaluation fits the budget."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from matlab.arch.facts import facts_from_checkpoint
from matlab.arch.inventory import inventory_from_checkpoint
from matlab.core.calibration import kl_to_reference, make_calibration, reference_distributions, window_subset
from matlab.core.loading import load_model
from matlab.io.resolve import resolve_checkpoint
from matlab.search.evopress import MAX_CHANGES, EvoPressSettings, Levels, mutate, start_points
from matlab.search.run import SearchSettings, run_search
from matlab.search.space import Budget, SearchSpace

NANO = resolve_checkpoint("nano")
BUDGET = 2_200_000


def _settings(out: Path, **fields) -> SearchSettings:
    values = dict(max_params=BUDGET, max_evals=30, window=64, calibration_tokens=512, strategy="evopress")
    return SearchSettings("nano", out, **{**values, **fields})


def _records(directory: Path) -> list[dict]:
    return [{key: value for key, value in json.loads(line).items() if not key.endswith("seconds")}
            for line in (directory / "candidates.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def nano_space():
    loaded = load_model(NANO)
    return SearchSpace(facts_from_checkpoint(NANO), inventory_from_checkpoint(NANO), loaded, None, None)


def test_children_keep_the_budget_change_little_and_never_repeat(nano_space):
    """The level-switch mutation: every child fits the budget, is valid, differs from its parent
    and from what is known, and took at most MAX_CHANGES level changes."""
    budget = Budget(max_params=BUDGET)
    levels = Levels(nano_space, budget)
    rng = random.Random(0)
    starts = start_points(levels, rng)
    assert starts and all(levels.fits(point) for point in starts)
    parent = starts[0]
    known = {nano_space.decode(parent).submodel_id}
    children = [mutate(levels, parent, rng, known) for _ in range(40)]
    children = [child for child in children if child is not None]
    assert len(children) >= 30
    for child in children:
        candidate = nano_space.decode(child)
        assert candidate.valid and budget.excess(candidate) <= 0
        assert candidate.submodel_id not in known
        changed = sum(levels.level(child, gene) != levels.level(parent, gene) for gene in levels.units)
        assert 1 < changed <= MAX_CHANGES + 2 * len(levels.skippable)  # a raise and its repair (a skip resets a layer)
    # The moves explore: children differ from each other, not one child drawn again and again.
    assert len({nano_space.decode(child).submodel_id for child in children}) >= 0.8 * len(children)


def test_a_screening_on_every_window_is_the_full_objective(nano_space):
    loaded = nano_space.loaded
    from matlab.core.loading import load_tokenizer
    from matlab.nano.world import calibration_text, make_world

    calibration = make_calibration(load_tokenizer(NANO), [calibration_text(make_world())], "nano", 64, 768)
    reference = reference_distributions(loaded.model, calibration, 64)
    windows = sum(len(batch) for batch in calibration.batches)
    assert windows == 12  # two batches: the subset crosses them
    import torch

    from matlab.core.submodel import select_submodel
    from matlab.slice_config import SliceConfig

    with torch.no_grad():
        model = select_submodel(loaded, SliceConfig(name="s", layers_skipped=(12, 13), ffn_widths=256)).model
        whole = kl_to_reference(model, calibration, reference)
        again = kl_to_reference(model, *window_subset(calibration, reference, tuple(range(windows))))
        parts = [kl_to_reference(model, *window_subset(calibration, reference, (w,))) for w in range(windows)]
    assert again == pytest.approx(whole, rel=1e-6)
    assert sum(parts) / windows == pytest.approx(whole, rel=1e-5)  # windows of equal length: the mean of the parts
    assert max(parts) > 1.2 * min(parts)  # and the parts differ: a screening is a sample, not the same number


def test_evopress_stays_in_the_budget_is_deterministic_and_resumes(tmp_path):
    first = run_search(_settings(tmp_path / "a"))
    records = _records(first.directory)
    assert records and all(record["effective_params"] <= BUDGET for record in records)  # never outside the budget
    assert records[0]["phase"] == "evopress-start"
    assert {record["phase"] for record in records} == {"evopress-start", "evopress"}
    summary = first.summary
    assert summary["timing"]["screened"] > 0  # the early stages ran on part of the windows
    assert summary["evaluated"] + summary["timing"]["screened"] * 1 / 8 <= 30 + 1e-9
    again = run_search(_settings(tmp_path / "b"))
    assert _records(again.directory) == records
    resumed = run_search(_settings(tmp_path / "a"))
    assert resumed.summary["evaluated_now"] == 0 and _records(resumed.directory) == records
    longer = run_search(_settings(tmp_path / "a", max_evals=40))
    assert _records(longer.directory)[:len(records)] == records and longer.summary["evaluated_now"] > 0


def test_scaled_settings_follow_the_evaluations_and_windows():
    assert EvoPressSettings.scaled(120, 8) == EvoPressSettings(15, ((3, 1), (1, 8)))
    assert EvoPressSettings.scaled(20, 8).offspring == 8 and EvoPressSettings.scaled(1000, 64).offspring == 32
    assert EvoPressSettings.scaled(120, 64).stages == ((3, 8), (1, 64))
    assert EvoPressSettings.scaled(120, 1).stages == ((1, 1),)  # one window: every offspring read whole


@pytest.mark.parametrize("strategy", ["seeded-nsga2", "greedy", "nsga2", "random", "evopress"])
def test_every_strategy_evaluates_inside_the_budget_first(tmp_path, strategy):
    """A tight budget and few evaluations still give a frontier: the first candidate fits."""
    result = run_search(_settings(tmp_path / strategy, strategy=strategy, max_params=1_500_000, max_evals=6))
    records = _records(result.directory)
    assert records[0]["effective_params"] <= 1_500_000
    assert result.summary["frontier"]


def test_an_unknown_strategy_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from matlab.cli import app

    result = CliRunner().invoke(app, ["search", "nano", "--out", str(tmp_path / "s"), "--max-params", "2.2M",
                                      "--strategy", "evopres"])
    assert result.exit_code == 2 and "--strategy evopres: choose one of evopress, seeded-nsga2" in result.stderr
    assert not (tmp_path / "s").exists()


class _ToySpace:
    """Two layers: layer 0 (width 4, 2 or 1) and layer 1 (skippable; width 4, 2 or 1). A
    candidate costs its kept widths."""

    gene_names = ["skip_1", "width_0", "width_1"]

    def choices(self, gene):
        return (0, 1) if gene.startswith("skip_") else (4, 2, 1)

    def decode(self, genes):
        from matlab.search.space import Candidate

        kept = [genes["width_0"]] + ([] if genes["skip_1"] else [genes["width_1"]])
        skipped = (1,) if genes["skip_1"] else ()
        return Candidate(skipped, tuple(kept), f"{skipped}-{kept}", (), sum(kept), sum(kept))


class _Scripted:
    """A random source that answers from a script, checking each choice was among those offered."""

    def __init__(self, counts, picks):
        self.counts, self.picks, self.offered = list(counts), list(picks), []

    def randint(self, low, high):
        return self.counts.pop(0)

    def choice(self, options):
        self.offered.append(sorted(options))
        pick = self.picks.pop(0)
        assert pick in options, (pick, options)
        return pick


def test_the_level_switch_mutation_on_a_toy_space_is_the_hand_worked_child():
    """Parent: layer 0 at 2, layer 1 at 2 (cost 4, the budget). One raise (min(1, 2) = 1):
    layer 0 to 4 (cost 6). Repair, never the raised unit: layer 1 to 1 (cost 5), then layer 1
    cannot narrow further, so it is skipped (cost 4). Added 2, removed 2: kept."""
    space, budget = _ToySpace(), Budget(max_params=4)
    levels = Levels(space, budget)
    parent = {"skip_1": 0, "width_0": 2, "width_1": 2}
    rng = _Scripted([1, 2], ["width_0", "width_1", "skip_1"])
    child = mutate(levels, parent, rng, known=set())
    assert child == {"skip_1": 1, "width_0": 4, "width_1": 1}
    assert rng.offered == [["width_0", "width_1"],  # raise: every unit that can grow (layer 1 is not skipped)
                           ["skip_1", "width_1"],  # repair: not the raised width_0
                           ["skip_1"]]  # width_1 at its narrowest
    # Back from a skip, a layer returns at its narrowest: one level is a small step.
    assert levels.moved(child, "skip_1", -1) == {"skip_1": 0, "width_0": 4, "width_1": 1}
    # A child that gives back much more than it took is rejected: at a budget of 5, raise
    # width_1 of a parent at (4, 1) to 2 (+1), then repair by the skip, which removes 2: 1 < 0.8 * 2.
    rng = _Scripted([1, 1] * 50, ["width_1", "skip_1"] * 50)
    assert mutate(Levels(space, Budget(max_params=5)), {"skip_1": 0, "width_0": 4, "width_1": 1}, rng,
                  known=set()) is None
    assert rng.offered[:2] == [["width_1"], ["skip_1", "width_0"]]


@pytest.mark.parametrize("strategy", ["seeded-nsga2", "evopress"])
def test_a_tight_budget_on_e4b_shape_returns_a_frontier_in_20_evaluations(runtime_model, tmp_path, strategy):
    """E4B's 35 layers: the one-step neighbourhood of the full model alone is over 20
    evaluations, all outside a tight budget; the search still returns a frontier."""
    from matlab.plan import SlicePlan
    from matlab.plan.accounting import count_parameters
    from matlab.slice_config import SliceConfig

    facts = facts_from_checkpoint(runtime_model)
    full = SlicePlan.build(SliceConfig(name="full", ffn_widths=tuple(facts.ffn_widths)), facts, "full")
    budget = int(0.5 * count_parameters(inventory_from_checkpoint(runtime_model), facts, full,
                                        text_only=True).effective_params)
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text("".join(json.dumps({"text": f"sample text number {i} about slicing"}) + "\n"
                                   for i in range(40)))
    result = run_search(SearchSettings(str(runtime_model), tmp_path / "s", max_params=budget, calibration=calibration,
                                       max_evals=20, window=32, calibration_tokens=256, strategy=strategy))
    assert facts.num_layers == 35 and result.summary["frontier"]
    assert all(entry["effective_params"] <= budget for entry in result.summary["frontier"])


def test_a_killed_evopress_search_resumes_to_the_same_journal(tmp_path):
    """Killed mid-run (SIGKILL), then started again with the same arguments: the journal is the
    one an uninterrupted run writes (screenings are recomputed, full evaluations replayed)."""
    import subprocess
    import sys

    from helpers import kill_when_journal_has

    arguments = ["--max-params", str(BUDGET), "--max-evals", "30", "--window", "64", "--calibration-tokens", "512",
                 "--strategy", "evopress"]
    whole = run_search(_settings(tmp_path / "whole"))
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "matlab", "search", "nano", "--out", str(out), *arguments]
    journal = out / "candidates.jsonl"
    partial = kill_when_journal_has(command, journal, 8, 180)
    assert 8 <= partial < len(_records(whole.directory))
    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert _records(out) == _records(whole.directory)
