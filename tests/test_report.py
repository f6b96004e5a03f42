"""Reports on run directories whose rows a test writes (the demo's layout: a sweep, a control
run and a search beside each other, configs and checkpoint elsewhere): no local path in the
page, units on every axis, every run on every plot, uncertainty on scores, and conclusions
computed from the data."""

from __future__ import annotations

import base64
import json
import re
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matlab.cli import app
from matlab.harness.results import RUN_FILE, record_config
from matlab.report.report import build_report
from matlab.report.scores import Score, format_score, log_scale
from matlab.report.tables import shown_path

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
SUITE = {"name": "nano", "tasks": [{"name": "nano_facts", "metric": "acc"},
                                   {"name": "nano_heldout", "metric": "word_perplexity", "higher_is_better": False}]}
BUDGET = 2_200_000
# name: (effective params, kept layers, facts acc, its stderr, perplexity, decode tokens/s (median, min, max))
HAND = {"nano-E4B": (5_046_928, 20, 0.6895, 0.0145, 4.096, (47.0, 44.0, 54.6)),
        "nano-L2": (3_670_672, 20, 0.6846, 0.0145, 4.104, (80.0, 78.0, 82.0)),
        "nano-E2B": (2_376_288, 15, 0.6826, 0.0146, 4.101, (69.2, 52.7, 72.0))}
FOUND = {"found-2.06M": (2_061_632, 13, 0.4365, 0.0155, 4.382, (68.0, 54.5, 75.1)),
         "found-1.90M": (1_904_304, 12, 0.3887, 0.0152, 4.473, (62.5, 60.9, 87.0)),
         "found-1.47M": (1_465_152, 9, 0.1904, 0.0123, 6.815, (85.2, 76.2, 106.1)),
         "found-0.75M": (750_624, 3, 0.0752, 0.0082, 216.7, (224.1, 186.9, 286.5))}
CONTROL = {"nano-E4B": (5_046_928, 20, 0.70, 0.0143, 4.0, (46.0, 44.0, 50.0)),
           "nano-E2B": (2_376_288, 15, 0.12, 0.0102, 9.5, (68.0, 60.0, 75.0))}


def _rows(name: str, facts: tuple, config_file: Path, checkpoint: Path, samples: int = 1024) -> list[dict]:
    params, layers, acc, stderr, perplexity, (decode, slowest, fastest) = facts
    common = {"config": name, "config_file": str(config_file), "submodel_id": f"id-{name}", "runs_in": ["transformers"],
              "expected_in": [], "layers_skipped": list(range(layers, 20)), "ffn_widths": [256] * layers,
              "kept_layers": layers, "effective_params": params, "ple_params": 1000 * layers,
              "text_params": params, "weight_bytes": 4 * params, "ple_bytes": 0, "prefill_tokens_per_s": 40 * decode,
              "decode_tokens_per_s": decode, "decode_tokens_per_s_min": slowest, "decode_tokens_per_s_max": fastest,
              "prefill_tokens_per_s_min": 30 * decode, "prefill_tokens_per_s_max": 50 * decode, "latency_rounds": 5,
              "latency_threads": 2, "latency_device": "cpu", "latency_measured_on": "this process",
              "peak_memory_bytes": None, "stated_effective_params_b": None, "stated_mmlu": None, "mode": "elastic",
              "device": "cpu", "dtype": "float32", "seed": 1234, "limit": None, "bos_policy": "lm-eval",
              "tool_version": "test", "checkpoint": str(checkpoint), "suite": "nano", "num_fewshot": 0, "seconds": 1.0}
    return [{**common, "task": "nano_facts", "metric": "acc", "value": acc, "stderr": stderr, "samples": samples},
            {**common, "task": "nano_heldout", "metric": "word_perplexity", "value": perplexity, "stderr": None,
             "samples": 60}]


def _sweep(run: Path, configs: dict, checkout: Path, checkpoint: Path, config_dir: Path) -> None:
    run.mkdir(parents=True)
    (run / RUN_FILE).write_text(json.dumps({"identity": {
        "checkpoint": {"path": str(checkpoint), "config_sha256": "ab12", "index_sha256": None}, "suite": SUITE,
        "limit": None, "materialize": False, "device": "cpu", "dtype": "float32", "seed": 1234},
        "tool_version": "test", "started": "2026-12-01T22:33:42+0000"}))
    for name, facts in configs.items():
        record_config(run, name, _rows(name, facts, config_dir / f"{name.lower()}.yaml", checkpoint))


@pytest.fixture()
def demo(tmp_path) -> Path:
    """OUT/sweep, OUT/control and OUT/search (with its confirm run) as the demo lays them out;
    the hand-written configs and the checkpoint live in a checkout elsewhere."""
    out, checkout = tmp_path / "out", tmp_path / "checkout"
    checkpoint = checkout / "matlab" / "data" / "nano"
    _sweep(out / "sweep", HAND, checkout, checkpoint, checkout / "slice_configs" / "nano")
    _sweep(out / "control", CONTROL, checkout, checkout / "nano-control", checkout / "slice_configs" / "nano")
    search = out / "search"
    _sweep(search / "confirm", FOUND, checkout, checkpoint, search / "frontier")
    candidates = [{"submodel_id": f"id-{name}", "layers_skipped": list(range(facts[1], 20)),
                   "ffn_widths": [256] * facts[1], "effective_params": facts[0], "weight_bytes": 4 * facts[0],
                   "value": value} for name, facts, value in
                  zip(FOUND, FOUND.values(), (0.05, 0.1, 0.4, 2.5))] + [
        {"submodel_id": f"other-{i}", "layers_skipped": [], "ffn_widths": [512] * 20,
         "effective_params": 1_000_000 + 150_000 * i, "weight_bytes": 4_000_000 + 600_000 * i,
         "value": 0.0 if i == 0 else 3.0 / (i + 1)} for i in range(12)]
    (search / "candidates.jsonl").write_text("".join(json.dumps(record) + "\n" for record in candidates))
    (search / "search.json").write_text(json.dumps({
        "status": "complete", "objective": "kl", "budget": {"max_params": BUDGET, "max_bytes": None,
                                                            "cost": "effective_params"},
        "frontier": [{"submodel_id": f"id-{name}", "name": name, "file": f"frontier/{name}.yaml"} for name in FOUND]}))
    return out


def _report(demo: Path) -> str:
    return build_report(demo / "sweep", demo.parent / "report", compare=demo / "control",
                        compare_label="control (trained at full size only)", search=demo / "search").read_text()


def _plots(html: str) -> dict[str, str]:
    return {title: base64.b64decode(data).decode() for title, data in re.findall(
        r"<h2>(.*?)</h2>\s*<figure><img alt=\"[^\"]*\" src=\"data:image/svg\+xml;base64,([^\"]+)\"", html)}


def test_a_report_names_no_path_of_the_machine_that_built_it(demo, tmp_path):
    html = _report(demo)
    page = html + "".join(_plots(html).values())
    for local in {str(tmp_path), str(tmp_path.resolve()), str(REPO), str(Path.home()), tempfile.gettempdir() + "/"}:
        assert local not in page, local
    # Paths beside the run directory are shown relative to it, the others by name.
    assert "../search/confirm" not in page and "../search/frontier/found-0.75m.yaml" in page
    assert ">nano-e2b.yaml<" in html and "../search</code>" in html and "../control</code>" in html
    assert "<code>sweep</code>" in html and "<code>nano (config.json sha256 ab12)</code>" in html


def test_shown_path(tmp_path):
    run = tmp_path / "out" / "sweep"
    assert shown_path(tmp_path / "out" / "search" / "a.yaml", run) == "../search/a.yaml"
    assert shown_path(run / "configs" / "a.json", run) == "configs/a.json"
    assert shown_path(tmp_path / "elsewhere" / "b.yaml", run) == "b.yaml"
    assert shown_path("slice_configs/c.yaml", run) == "slice_configs/c.yaml"
    assert shown_path("/x.yaml", Path("/run")) == "x.yaml"


def test_every_plot_has_units_every_run_and_uncertainty(demo):
    html = _report(demo)
    plots = _plots(html)
    assert len(plots) == 6  # two tasks, weights, latency, the search, the heat map
    tradeoffs = {title: svg for title, svg in plots.items() if " against " in title and "search" not in title}
    assert len(tradeoffs) == 4
    for title, svg in tradeoffs.items():
        assert "found by search" in svg and "control (trained at full size only)" in svg, title
        assert "1e6" not in svg and "1e7" not in svg and "documents" in svg, title
    assert "effective parameters (M)" in plots["nano_facts (acc) against effective parameters"]
    assert "acc (fraction)" in plots["nano_facts (acc) against effective parameters"]
    assert "weights (MB" in plots["nano_facts (acc) against weights"]
    assert "ms per token" in plots["nano_facts (acc) against decode latency"]
    heatmap = plots["Per-layer FFN widths and skipped layers"]
    assert "FFN width" in heatmap and "skipped" in heatmap and "base width" not in heatmap
    # Scores carry their stderr and the documents they rest on; latency is in ms per token, as plotted.
    assert "0.683 \u00b1 0.015" in html and "nano_facts acc (n=1,024)" in html
    assert "decode ms/token (range)" in html and "tok/s" not in html
    assert ">14.5 (13.9-19.0)<" in html  # nano-E2B: 1000/69.2 ms (1000/72.0 to 1000/52.7)
    # The control's rows are in the table, keyed as on the plots; all-empty columns are left out, once said why.
    assert "<td>C2</td><td class=\"name\">nano-E4B</td>" in html
    assert "peak memory" not in html.split("<h2>Results</h2>")[1].split("</p>")[1]
    assert "Left out, empty in every row: peak memory (MB) (measured per config on CUDA only" in html
    assert "stated MMLU" not in html.split("<h2>Configs</h2>")[1].split("</p>")[1]


def test_the_report_says_what_the_data_says(demo):
    html = _report(demo)
    said = html.split("What the data says")[1].split("</ul>")[0]
    assert ("nano_facts acc: found-2.06M (2.06M parameters) keeps 0.436 \u00b1 0.015 where nano-E2B (2.38M) keeps "
            "0.683 \u00b1 0.015, the frontier&#39;s largest step, for 15% more parameters; the search&#39;s budget "
            "(2.20M) sits on this cliff.") in said
    assert "nano-E2B (2.38M) and nano-E4B (5.05M) are within noise" in said
    assert "steps along the frontier are within their combined stderr" in said
    assert "nano-E2B keeps 0.683 \u00b1 0.015 sliced from this run&#39;s model and 0.120 \u00b1 0.010 from control" \
        in said and "a significant difference" in said
    # nano-L2 does more work than nano-E2B (more layers, more weights) yet was timed faster.
    assert "Latency: 1 config&#39;s rounds disagree by more than 1.5 times (the worst, found-0.75M: 3.5 to 5.4 ms " \
        "per token): the machine was busy" in said
    assert "nano-L2 (20 layers, 14.7 MB) measured faster than " in said
    assert "their rounds disagree by more than their own spread" in said


def test_conclusions_follow_the_data_not_the_configs_names(demo, tmp_path):
    """With nano-E4B well above nano-E2B and the found slices close to it, the same names get
    other conclusions: nothing is written about nano in advance."""
    for path in (demo / "sweep" / "configs").glob("*.json"):
        rows = json.loads(path.read_text())
        for row in rows:
            if row["config"] == "nano-E4B" and row["metric"] == "acc":
                row["value"] = 0.9
        path.write_text(json.dumps(rows))
    (demo / "sweep" / "results.jsonl").write_text("".join(
        json.dumps(row) + "\n" for path in sorted((demo / "sweep" / "configs").glob("*.json"))
        for row in json.loads(path.read_text())))
    said = _report(demo).split("What the data says")[1].split("</ul>")[0]
    assert "are within noise" not in said.split("nano_heldout")[0]


def test_search_overlay_from_the_cli_in_the_demo_layout(demo, tmp_path):
    help_text = runner.invoke(app, ["report", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--search OUT/search" in help_text
    result = runner.invoke(app, ["report", str(demo / "sweep"), "--out", str(tmp_path / "r"), "--search",
                                 str(demo / "search"), "--compare", str(demo / "control")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "index.html").read_text().count("&#9733; found-") == len(FOUND)


def test_scores_and_scales():
    assert format_score(Score(0.68261, 0.01456, 1024, False)) == "0.683 \u00b1 0.015"
    assert format_score(Score(0.4, 0.155, 10, True)) == "0.40 \u00b1 0.15"
    assert format_score(Score(4.1012, None, 60, False)) == "4.101"
    assert log_scale([4.1, 12.9, 216.7]) and not log_scale([4.1, 12.9]) and not log_scale([0.02, 0.69])


def test_keys_never_overlap_and_stay_inside_the_axes():
    """Two dozen points, some coincident and many crowded, as a sweep's configs are."""
    import matplotlib.pyplot as plt

    from matlab.report.draw import STYLES, Mark, Series, _marker_boxes, _place_keys

    costs = [2.38, 2.47, 3.57, 3.67, 3.77, 3.87, 4.02, 4.06, 4.06, 4.26, 4.28, 4.28, 4.56, 4.56, 4.65, 5.05,
             0.75, 1.07, 1.24, 1.47, 1.72, 1.90, 2.06, 2.16]
    scores = [0.683, 0.684, 0.680, 0.685, 0.685, 0.691, 0.406, 0.686, 0.684, 0.690, 0.314, 0.429, 0.686, 0.689,
              0.688, 0.690, 0.075, 0.077, 0.105, 0.190, 0.186, 0.389, 0.437, 0.433]
    marks = [Mark(str(i + 1), c, s) for i, (c, s) in enumerate(zip(costs, scores))]
    figure, axes = plt.subplots(figsize=(7.6, 4.6))
    series = [Series("configs", "configs", marks)]
    axes.scatter(costs, scores, s=STYLES["configs"][1])
    unplaced = _place_keys(axes, [(m.key, m.cost, m.score, STYLES["configs"][4]) for m in marks],
                           _marker_boxes(axes, series))
    renderer = figure.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in axes.texts]
    frame = axes.get_window_extent(renderer)
    assert unplaced == [] and len(boxes) == 22  # coincident points share one key
    assert {"8,9", "13,14"} <= {text.get_text() for text in axes.texts}
    for i, box in enumerate(boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        assert not any(box.overlaps(other) for other in boxes[i + 1:])
    plt.close(figure)


def test_the_same_run_gives_the_same_bytes(demo):
    first = _report(demo)
    again = build_report(demo / "sweep", demo.parent / "again", compare=demo / "control",
                         compare_label="control (trained at full size only)", search=demo / "search").read_text()
    assert again == first  # no build date or random ids in the SVGs: committed reports diff cleanly
