"""Our search against EvoPress (`matformer bench search-peers`), on nano.

Both strategies run in the same code (`matformer search --strategy seeded-nsga2|evopress`):
the same space, objective (KL to the full model on the calibration windows), journal and
evaluation count, so they differ in the algorithm alone. Three spaces, two budgets each:

- depth: layer skips only, every kept layer at full width (EvoPress's layer-dropping setting);
- formats: a GGUF format per tensor group at the full architecture (its bit-width setting, as
  in IST-DASLab's gptq-gguf-toolkit);
- joint: skips, FFN widths and formats together (this project's space).

Each search's best config within the budget is scored on the held-out nano suite (at its
formats), with the suite's stderr. Then calibration sensitivity: in the joint space at the lower
budget, both strategies calibrated on three texts (the nano world's documents, new documents
of the same world, and text nano never saw: this project's README), each found config scored
on the same held-out suite: how much of the difference is the algorithm and how much the data.
"""

from __future__ import annotations

import json
import random
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

from matlab.arch.facts import facts_from_checkpoint
from matlab.arch.inventory import inventory_from_checkpoint
from matlab.bench.suite_rows import sweep_chosen
from matlab.io.resolve import resolve_checkpoint
from matlab.nano.world import document, make_world
from matlab.plan import SlicePlan
from matlab.plan.accounting import count_parameters
from matlab.progress import NO_PROGRESS, Progress
from matlab.report.scores import score_of
from matlab.search.run import SearchSettings, run_search
from matlab.slice_config import SliceConfig, load_slice_config

STRATEGIES = ("seeded-nsga2", "evopress")
FORMATS = ("q8_0", "q5_0", "q4_0")
# Each space's budgets, as shares of the full model: effective parameters for depth, the bf16
# GGUF file's tensor bytes otherwise.
SPACES = {"depth": (0.75, 0.6), "formats": (0.3, 0.24), "joint": (0.35, 0.6)}
HELD_OUT_SEED = 7  # new documents of nano's world: a seed no training, evaluation or calibration text uses


def calibration_files(work_dir: Path) -> dict[str, Path | None]:
    """The three calibration texts: None is the search's default (the nano world's documents)."""
    folder = work_dir / "calibration"
    folder.mkdir(parents=True, exist_ok=True)
    generator = random.Random(10_000 + HELD_OUT_SEED)
    world = make_world()
    held_out = folder / "held-out.jsonl"
    held_out.write_text("".join(json.dumps({"text": document(world, generator)}) + "\n" for _ in range(40)),
                        encoding="utf-8")
    unseen = folder / "unseen.txt"
    try:
        text = metadata("matformer-lab")["Description"] or ""
    except PackageNotFoundError:
        text = ""
    if len(text) < 4000:  # a source tree that was not installed: the README beside the package
        text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    unseen.write_text(text, encoding="utf-8")
    return {"world": None, "held-out": held_out, "unseen": unseen}


def _space_settings(space: str, width: int, full_params: int, full_bytes: int, share: float) -> dict:
    base = dict(widths=None, formats=None, skips=True)
    if space == "depth":
        return {**base, "widths": (width,), "max_params": int(full_params * share)}
    if space == "formats":
        return {**base, "formats": FORMATS, "skips": False, "max_bytes": int(full_bytes * share)}
    return {**base, "formats": FORMATS, "max_bytes": int(full_bytes * share)}


def _score(checkpoint: str, facts, configs: dict[str, SliceConfig], run_dir: Path, suite: Path,
           limit: int | None, progress: Progress) -> dict[str, dict]:
    """Each config's held-out suite scores and stderr (a config chosen twice is scored once)."""
    scored_rows, _ = sweep_chosen(checkpoint, facts, configs, suite, run_dir, limit, progress)
    scores = {}
    for stem, rows in scored_rows.items():
        scores[stem] = {}
        for row in rows.to_dict("records"):
            score = score_of(row)  # lm-eval's stderr, or the binomial estimate under --limit
            scores[stem][f"{row['task']}:{row['metric']}"] = [score.value, score.stderr]
    return scores


def bench_search_peers(suite: Path, work_dir: Path, checkpoint: str = "nano", max_evals: int = 60,
                       seeds: tuple[int, ...] = (0, 1, 2), window: int = 128, calibration_tokens: int = 1024,
                       limit: int | None = None, spaces: tuple[str, ...] = tuple(SPACES),
                       calibration: bool = True, progress: Progress = NO_PROGRESS) -> dict:
    directory = resolve_checkpoint(checkpoint)
    facts = facts_from_checkpoint(directory)
    full = SlicePlan.build(SliceConfig(name="full", ffn_widths=tuple(facts.ffn_widths)), facts, "full")
    counts = count_parameters(inventory_from_checkpoint(directory), facts, full, text_only=True)
    bf16 = SliceConfig(name="bf16", ffn_widths=tuple(facts.ffn_widths), weight_formats={"default": "bf16"})
    full_bytes = count_parameters(inventory_from_checkpoint(directory), facts,
                                  SlicePlan.build(bf16, facts, "bf16"), text_only=True).format_bytes
    common = dict(max_evals=max_evals, window=window, calibration_tokens=calibration_tokens)
    result: dict = {"checkpoint": checkpoint, "max_evals": max_evals, "seeds": list(seeds),
                    "full_effective_params": counts.effective_params, "full_bf16_bytes": full_bytes, "runs": []}
    found: dict[str, SliceConfig] = {}

    def search(space: str, share: float, strategy: str, seed: int, text: str, calibration_file: Path | None) -> None:
        name = f"{space}-{share}-{strategy}-{seed}-{text}"
        settings = _space_settings(space, max(facts.ffn_widths), counts.effective_params, full_bytes, share)
        summary = run_search(SearchSettings(checkpoint, work_dir / "searches" / name, seed=seed, strategy=strategy,
                                            calibration=calibration_file, **settings, **common),
                             progress=progress).summary
        best = summary["best"]
        run = {"name": name, "space": space, "share": share, "strategy": strategy, "seed": seed, "calibration": text,
               "budget": settings.get("max_params") or settings.get("max_bytes"),
               "budget_kind": "effective_params" if "max_params" in settings else "bytes",
               "best_kl": best["value"] if best else None, "evaluated": summary["evaluated"],
               "screened": summary["timing"].get("screened", 0), "seconds": summary["timing"]["seconds"],
               "first_within_budget": _first_within(work_dir / "searches" / name, settings)}
        if best:
            config = load_slice_config(work_dir / "searches" / name / best["file"])
            run.update(effective_params=best["effective_params"], weight_bytes=best["weight_bytes"],
                       layers_skipped=best["layers_skipped"])
            found[name] = config
        result["runs"].append(run)

    for space in spaces:
        for share in SPACES[space]:
            for strategy in STRATEGIES:
                for seed in seeds:
                    search(space, share, strategy, seed, "world", None)
    if calibration:
        texts = calibration_files(work_dir)
        share = SPACES["joint"][0]
        for text, path in texts.items():
            if text == "world" and "joint" in spaces:
                continue  # already run above, seed 0
            for strategy in STRATEGIES:
                search("joint", share, strategy, seeds[0], text, path)
    scores = _score(checkpoint, facts, found, work_dir / "suite", suite, limit, progress)
    for run in result["runs"]:
        run["suite"] = scores.get(run["name"])
    return result


def _first_within(run_dir: Path, settings: dict) -> int | None:
    """The journal position of the first candidate within the budget (0: the first one)."""
    for position, line in enumerate((run_dir / "candidates.jsonl").read_text(encoding="utf-8").splitlines()):
        record = json.loads(line)
        within = record["effective_params"] <= settings["max_params"] if "max_params" in settings \
            else record["weight_bytes"] <= settings["max_bytes"]
        if within:
            return position
    return None
