"""Published figures beside measured ones, on a run directory whose rows a test writes (no
real model can be scored here): the model card's E2B/E4B marks and differences, a config
between them, a task with no published figure, and MMLU as the slice configs state it."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from matlab.arch.facts import facts_from_arch
from matlab.arch.inventory import inventory_from_facts
from matlab.harness.results import RUN_FILE, record_config
from matlab.harness.suite import SuiteError, load_suite
from matlab.plan import SlicePlan
from matlab.plan.accounting import count_parameters
from matlab.report.report import build_report
from matlab.slice_config import load_slice_config
from matlab.slice_config.bundled import resolve_suite

REPO = Path(__file__).resolve().parent.parent
E4B_CONFIGS = REPO / "slice_configs" / "gemma-3n-e4b"


def test_the_suites_published_models_sit_at_their_exact_parameter_counts():
    suite = load_suite(resolve_suite("gemma3n-model-card"))
    facts = facts_from_arch("gemma-3n-e4b")
    inventory = inventory_from_facts(facts)
    e2b = SlicePlan.build(load_slice_config(E4B_CONFIGS / "e2b.yaml"), facts)
    assert suite.published.models == {"E2B": count_parameters(inventory, facts, e2b).effective_params,
                                      "E4B": count_parameters(inventory, facts).effective_params}
    assert len(suite.tasks) == 11 and all(task.published and task.card for task in suite.tasks)
    assert {task.name for task in suite.tasks} >= {"nq_open", "bbh_cot_fewshot", "drop"}
    assert suite.published.dtype == "float32"


def test_published_figures_must_name_listed_models(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\npublished: {source: card, models: {E2B: 10}}\n"
                    "tasks: [{name: boolq, published: {E2B: 70, E9B: 80}}]\n")
    with pytest.raises(SuiteError, match=r"tasks.0 \(boolq\): published figures for E9B, which the suite's "
                                         r"published.models does not list \(E2B\)"):
        load_suite(path)


def _row(config: str, params: int, task: str, metric: str, value: float, stated_mmlu: float | None = None) -> dict:
    return {"config": config, "config_file": f"{config}.yaml", "submodel_id": config, "runs_in": ["transformers"],
            "layers_skipped": [], "ffn_widths": [8192] * 35, "kept_layers": 35, "effective_params": params,
            "ple_params": 0, "text_params": params, "weight_bytes": 2 * params, "ple_bytes": 0,
            "prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 10.0, "peak_memory_bytes": None,
            "stated_effective_params_b": None, "stated_mmlu": stated_mmlu, "mode": "elastic", "device": "cuda:0",
            "dtype": "bfloat16", "seed": 1234, "limit": None, "bos_policy": "lm-eval", "tool_version": "test",
            "checkpoint": "gemma-3n-E4B", "suite": "card", "task": task, "metric": metric, "value": value,
            "stderr": None, "samples": 100, "num_fewshot": 0, "seconds": 1.0}


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    card = load_suite(resolve_suite("gemma3n-model-card"))
    suite = card.model_copy(update={"tasks": (*card.tasks[:1], card.tasks[-1], *load_suite(
        resolve_suite("mmlu")).tasks)})  # hellaswag, drop (card figures), mmlu (none: stated per config)
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_FILE).write_text(json.dumps({"identity": {"suite": suite.model_dump(mode="json"), "dtype": "bfloat16"}}))
    configs = {"E2B": (1_905_495_648, 0.735, 0.521, 0.50, 0.509), "E2.98B": (2_981_000_000, 0.760, 0.560, 0.58, 0.595),
               "E4B": (3_980_491_248, 0.790, 0.612, 0.61, 0.623)}
    for name, (params, hellaswag, drop, mmlu, stated) in configs.items():
        record_config(run, name, [_row(name, params, "hellaswag", "acc_norm", hellaswag, stated),
                                  _row(name, params, "drop", "f1", drop, stated),
                                  _row(name, params, "drop", "em", drop - 0.1, stated),
                                  _row(name, params, "mmlu", "acc", mmlu, stated)])
    return run


def _plots(html: str) -> dict[str, str]:
    titles = re.findall(r"<h2>(.*?)</h2>\s*<figure><img alt=\"[^\"]*\" src=\"data:image/svg\+xml;base64,([^\"]+)\"",
                        html)
    return {title: base64.b64decode(data).decode() for title, data in titles}


def test_report_draws_and_tabulates_published_figures(run_dir, tmp_path):
    html = (build_report(run_dir, tmp_path / "report")).read_text()
    # Cells: measured / published (difference in points), for E2B and E4B; none for the 2.98B config.
    assert "0.735 / 0.722 (+1.3)" in html and "0.79 / 0.786 (+0.4)" in html  # hellaswag
    assert "0.521 / 0.539 (-1.8)" in html and "0.612 / 0.608 (+0.4)" in html  # drop f1
    assert "0.76 /" not in html and ">0.76<" in html
    # MMLU has no card figure; each config's stated MMLU (Google's CSV) sits beside it instead.
    assert "0.58 / 0.595 (-1.5)" in html and "0.5 / 0.509 (-0.9)" in html
    # The comparison table names the card's rows, lm-eval's tasks and how they match.
    table = html[html.index("Published figures beside measured"):html.index("<h2>Configs</h2>")]
    assert "HellaSwag 10-shot" in table and "DROP 1-shot (token F1)" in table and "drop f1, 1-shot" in table
    assert "evaluated in float32; this run used bfloat16" in table and "MMLU" not in table
    assert table.count("<td>+") + table.count("<td>-") == 4
    plots = _plots(html)
    hellaswag = next(svg for title, svg in plots.items() if title.startswith("hellaswag"))
    assert "E2B (card)" in hellaswag and "E4B (card)" in hellaswag
    mmlu = next(svg for title, svg in plots.items() if title.startswith("mmlu"))
    assert "(card)" not in mmlu and "stated by source" in mmlu
