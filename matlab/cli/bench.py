"""Benchmark commands: numbers measured on this machine, compared as ratios within one run."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from matlab.cli.common import (
    DtypeOpt,
    GuardedGroup,
    JsonOpt,
    LimitOpt,
    SuiteOpt,
    config_paths,
    console,
    errors,
    finite,
    reported_errors,
    say,
    shown,
    usage_error,
)

bench_app = typer.Typer(help="Benchmarks (numbers measured on this machine, ratios within one run).",
                        no_args_is_help=True, cls=GuardedGroup)


@bench_app.command("slice")
def bench_slice_command(checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Full checkpoint directory.")],
                        config: Annotated[Path, typer.Option("--config", help="Slice config YAML.")],
                        work_dir: Annotated[Path, typer.Option(help="Scratch space for outputs.")] = Path("bench-work"),
                        text_only: Annotated[bool, typer.Option(help="Benchmark --text-only slicing.")] = False,
                        repeat: Annotated[int, typer.Option(min=1)] = 1,
                        as_json: JsonOpt = False) -> None:
    """Our slicer vs a notebook-style naive slicer vs copying the output's bytes."""
    from matlab.bench.slice_bench import bench_slice

    with reported_errors():
        result = bench_slice(checkpoint, config, work_dir, text_only=text_only, repeat=repeat)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table("method", "seconds", "peak RSS (MiB)", "read (MB)", "written (MB)",
                  title=shown(f"slicing {checkpoint} with {config}{' --text-only' if text_only else ''}"))
    for method, numbers in result["methods"].items():
        table.add_row(method, f"{numbers['seconds']:.2f}", f"{numbers['peak_rss_bytes'] / 2**20:.0f}",
                      f"{numbers['bytes_read'] / 1e6:.0f}", f"{numbers['bytes_written'] / 1e6:.0f}")
    console.print(table)
    say(f"ours/naive time {result['ours_over_naive_seconds']:.2f}, ours/copy time "
                  f"{result['ours_over_copy_seconds']:.2f}, ours/naive peak RSS {result['ours_over_naive_rss']:.2f}; "
                  f"{result['tensors_verified_equal']} tensors read back equal")


@bench_app.command("sweep")
def bench_sweep_command(checkpoint: Annotated[str, typer.Option("--checkpoint", help="Full checkpoint, or nano.")],
                        configs: Annotated[list[str], typer.Option(
                            "--configs", help="Config files, folders or a bundled set.")],
                        suite: SuiteOpt, limit: LimitOpt = None,
                        work_dir: Annotated[Path, typer.Option(help="Scratch space for the two runs.")] = Path(
                            "bench-work"),
                        as_json: JsonOpt = False) -> None:
    """An elastic sweep against a --materialize sweep: end-to-end time and identical scores."""
    from matlab.bench.sweep_bench import bench_sweep
    from matlab.slice_config.bundled import resolve_suite

    with reported_errors():
        paths = config_paths(configs)
        result = bench_sweep(checkpoint, paths, resolve_suite(suite), work_dir, limit=limit)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table("mode", "sweep seconds", "peak RSS (MiB)",
                  title=shown(f"sweeping {len(paths)} configs of {checkpoint}"))
    for mode, numbers in result["modes"].items():
        table.add_row(mode, f"{numbers['sweep_seconds']:.1f}", f"{numbers['peak_rss_bytes'] / 2**20:.0f}")
    console.print(table)
    say(f"materialize/elastic time {result['materialize_over_elastic_seconds']:.2f}; "
                  f"{result['scores_identical']} of {result['scores_compared']} scores identical "
                  f"(largest difference {result['max_score_difference']:.3g})")


@bench_app.command("switch")
def bench_switch_command(checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Full checkpoint directory.")],
                         config: Annotated[Path, typer.Option("--config", help="Slice config YAML.")],
                         dtype: DtypeOpt = "bfloat16",
                         work_dir: Annotated[Path, typer.Option(help="Scratch space for the slice.")] = Path(
                             "bench-work"),
                         as_json: JsonOpt = False) -> None:
    """Switching cost: build an elastic submodel of a loaded model vs slice to disk and load."""
    from matlab.bench.sweep_bench import bench_switch

    with reported_errors():
        result = bench_switch(checkpoint, config, work_dir, dtype=dtype)
    if as_json:
        console.print_json(json.dumps(result))
        return
    elastic, disk = result["modes"]["elastic"], result["modes"]["materialize"]
    table = Table("step", "seconds", title=shown(f"switching {checkpoint} to {config} ({dtype}, text only)"))
    table.add_row("load the full model and warm it (once per sweep)",
                  f"{elastic['load_full_seconds'] + elastic['full_model_warmup_seconds']:.2f}")
    table.add_row("elastic: build the submodel (median)", f"{result['elastic_build_seconds']:.3f}")
    table.add_row("elastic: its first forward pass", f"{elastic['first_forward_seconds']:.2f}")
    table.add_row("disk: slice to disk", f"{disk['slice_seconds']:.2f}")
    table.add_row("disk: load the slice", f"{disk['load_slice_seconds']:.2f}")
    table.add_row("disk: its first forward pass", f"{disk['first_forward_seconds']:.2f}")
    console.print(table)
    say(f"disk/elastic switching time {result['disk_over_elastic']:.0f}x; peak RSS elastic "
                  f"{elastic['peak_rss_bytes'] / 2**30:.2f} GiB, disk {disk['peak_rss_bytes'] / 2**30:.2f} GiB; "
                  f"largest logit difference {result['max_logit_difference']:.3g}")


@bench_app.command("nano-capacity")
def bench_nano_capacity_command(
        people: Annotated[int, typer.Option(min=2, max=4096, help="People in the synthetic world (4 facts each).")
                          ] = 256,
        steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 2000,
        every: Annotated[int, typer.Option(min=1, help="Score the fact questions every this many steps.")] = 250,
        fact_share: Annotated[float, typer.Option(min=0.0, max=1.0, callback=finite,
                                                  help="Share of training sentences that are facts.")] = 0.7,
        frozen_names: Annotated[bool, typer.Option(
            help="Keep the names' embedding rows at their random initial values, so facts must live in the layers.")
                                ] = False,
        ffn: Annotated[int, typer.Option(min=2, help="The full model's FFN width (nano ships with 512).")] = 512,
        seed: int = 0,
        threads: Annotated[int, typer.Option(min=0, help="Torch CPU threads (0: torch's default).")] = 0,
        device: Annotated[str, typer.Option(help="Torch device to train on (cpu, cuda).")] = "cpu",
        as_json: JsonOpt = False) -> None:
    """Train nano as a MatFormer on a world of a given size; fact accuracy of nano-E4B, nano-E2B
    and nano-L4 (held-out frames) every few steps."""
    import torch

    from matlab.bench.nano_capacity import MEASURED, bench_capacity
    from matlab.nano.train import TrainSettings

    if threads:
        torch.set_num_threads(threads)
    command = shlex.join(["matformer", "bench", "nano-capacity", "--people", str(people), "--steps", str(steps),
                          "--every", str(every), "--fact-share", str(fact_share), "--ffn", str(ffn),
                          "--seed", str(seed),
                          *(["--frozen-names"] if frozen_names else [])])
    settings = TrainSettings(steps=steps, seed=seed, people=people, fact_share=fact_share, frozen_names=frozen_names,
                             ffn=ffn, device=device)
    with reported_errors():
        # Points go to stderr as they are measured (stdout stays one JSON document with --json).
        result = bench_capacity(settings, every, on_point=lambda point: errors.print(
            f"step {point['step']}: " + ", ".join(f"{stem} {point[stem]:.3f}" for stem in MEASURED), highlight=False))
    result["command"] = command
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table("step", *MEASURED, "E4B - E2B",
                  title=f"fact accuracy, {people} people (chance {result['chance']:.3f})")
    for point in result["points"]:
        table.add_row(str(point["step"]), *(f"{point[stem]:.3f}" for stem in MEASURED),
                      f"{point['nano-e4b'] - point['nano-e2b']:+.3f}")
    console.print(table)
    say(f"{result['seconds'] / 60:.1f} minutes of training; reproduce: {command}")


@bench_app.command("search-peers")
def bench_search_peers_command(
        suite: SuiteOpt = "nano", limit: LimitOpt = None,
        max_evals: Annotated[int, typer.Option(min=8, help="Evaluations per search.")] = 60,
        seeds: Annotated[str, typer.Option(help="Seeds, comma-separated.")] = "0,1,2",
        spaces: Annotated[str, typer.Option(help="Spaces: depth, formats, joint.")] = "depth,formats,joint",
        calibration: Annotated[bool, typer.Option(help="Also the calibration-sensitivity runs.")] = True,
        work_dir: Annotated[Path, typer.Option(help="Scratch space (searches resume from here).")] = Path(
            "bench-work/search-peers"),
        as_json: JsonOpt = False) -> None:
    """Our search against EvoPress at equal evaluations on nano: three spaces, two budgets,
    seeds, held-out suite scores; and how much the calibration text changes what each finds."""
    from matlab.bench.search_peers import SPACES, bench_search_peers
    from matlab.cli.common import RichProgress, quiet_evaluation
    from matlab.slice_config.bundled import resolve_suite

    with reported_errors(), quiet_evaluation(search=True), RichProgress() as progress:
        try:
            seed_list = tuple(int(text) for text in seeds.split(","))
        except ValueError as error:
            raise usage_error(f"--seeds: {error}") from None
        chosen = tuple(name.strip() for name in spaces.split(","))
        unknown = [name for name in chosen if name not in SPACES]
        if unknown:
            raise usage_error(f"--spaces {', '.join(unknown)}: choose from {', '.join(SPACES)}")
        result = bench_search_peers(resolve_suite(suite), work_dir, max_evals=max_evals, seeds=seed_list,
                                    limit=limit, spaces=chosen, calibration=calibration, progress=progress)
    result["command"] = shlex.join(["matformer", "bench", "search-peers", "--max-evals", str(max_evals), "--seeds",
                                    seeds, "--spaces", spaces, *([] if calibration else ["--no-calibration"]),
                                    *(["--limit", str(limit)] if limit else [])])
    if as_json:
        console.print_json(json.dumps(result))
        return
    metrics = sorted({key for run in result["runs"] for key in (run.get("suite") or {})
                      if key.endswith((":acc", ":word_perplexity"))})
    table = Table("space", "budget", "strategy", "seed", "calibration", "best KL", "first within budget",
                  "seconds", *metrics, title=f"{result['max_evals']} evaluations per search")
    for run in result["runs"]:
        suite_scores = run.get("suite") or {}
        table.add_row(run["space"], f"{run['share']:g}", run["strategy"], str(run["seed"]), run["calibration"],
                      "none" if run["best_kl"] is None else f"{run['best_kl']:.4g}",
                      str(run["first_within_budget"]), f"{run['seconds']:.0f}",
                      *(f"{suite_scores[m][0]:.3f}" if m in suite_scores else "" for m in metrics))
    console.print(table)
    console.print(f"reproduce: {result['command']}")


@bench_app.command("serve")
def bench_serve_command(
        tokens: Annotated[int, typer.Option(min=2, max=192, help="Tokens each request decodes.")] = 64,
        prompts: Annotated[int, typer.Option(min=1, max=8, help="Prompts (and the batch served at once).")] = 8,
        work_dir: Annotated[Path, typer.Option(help="Scratch space (slices, server logs).")] = Path(
            "bench-work/serve"),
        as_json: JsonOpt = False) -> None:
    """nano's full model, nano-E2B and a search-found slice served by vLLM (with this package's
    plugin) against the elastic core's generation: time to first token and tokens per second."""
    from matlab.bench.serving import bench_serve
    from matlab.cli.common import RichProgress, quiet_evaluation

    with reported_errors(), quiet_evaluation(search=True), RichProgress() as progress:
        result = bench_serve(work_dir, tokens=tokens, prompts=prompts, progress=progress)
    result["command"] = shlex.join(["matformer", "bench", "serve", "--tokens", str(tokens), "--prompts", str(prompts)])
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table("config", "layers", "weight bytes", "vLLM TTFT ms", "vLLM tokens/s (1 stream)",
                  f"vLLM tokens/s ({prompts} at once)", "elastic core TTFT ms", "elastic core tokens/s (1 stream)",
                  title=f"{prompts} prompts of {result['prompt_tokens']} tokens, {tokens} greedy tokens each")
    for name, row in result["configs"].items():
        table.add_row(name, str(row["layers"]), f"{row['weight_bytes']:,}", f"{row['vllm']['ttft_ms']:.0f}",
                      f"{row['vllm']['stream_tokens_per_s']:.1f}", f"{row['vllm']['batch_tokens_per_s']:.1f}",
                      f"{row['elastic_core']['ttft_ms']:.0f}", f"{row['elastic_core']['stream_tokens_per_s']:.1f}")
    console.print(table)
    console.print(f"reproduce: {result['command']}")


@bench_app.command("search")
def bench_search_command(
        checkpoint: Annotated[str, typer.Option("--checkpoint", help="Full checkpoint, or nano.")] = "nano",
        budgets: Annotated[str, typer.Option(help="Effective-parameter budgets, comma-separated.")] = "2.2M,3.5M",
        suite: SuiteOpt = "nano", limit: LimitOpt = None,
        max_evals: Annotated[int, typer.Option(min=1, help="Evaluations per search.")] = 120,
        seeds: Annotated[str, typer.Option(help="Seeds, comma-separated.")] = "0,1,2",
        random_configs: Annotated[int, typer.Option(min=1, help="Random configs scored on the suite.")] = 20,
        work_dir: Annotated[Path, typer.Option(help="Scratch space.")] = Path("bench-work/search"),
        as_json: JsonOpt = False) -> None:
    """Search strategies at equal evaluations, and the search's best slice against random,
    uniform and hand-written slices on a held-out suite."""
    from matlab.bench.search_bench import bench_search
    from matlab.cli.common import RichProgress, quiet_evaluation
    from matlab.slice_config.bundled import resolve_suite
    from matlab.util.sizes import parse_count

    with reported_errors(), quiet_evaluation(search=True), RichProgress() as progress:
        try:
            parsed = [parse_count(text) for text in budgets.split(",")]
            seed_list = tuple(int(text) for text in seeds.split(","))
        except ValueError as error:
            raise usage_error(f"--budgets/--seeds: {error}") from None
        result = bench_search(checkpoint, parsed, resolve_suite(suite), work_dir, max_evals=max_evals,
                              seeds=seed_list, random_count=random_configs, limit=limit, progress=progress)
    result["command"] = shlex.join(["matformer", "bench", "search", "--checkpoint", checkpoint, "--budgets", budgets,
                                    "--max-evals", str(max_evals), "--seeds", seeds, "--random-configs",
                                    str(random_configs), *(["--limit", str(limit)] if limit else [])])
    if as_json:
        console.print_json(json.dumps(result))
        return
    for budget, numbers in result["budgets"].items():
        table = Table("strategy", "best objective (per seed)", "within budget", title=f"budget {budget}: "
                      f"{max_evals} evaluations each")
        for strategy, runs in numbers["strategies"].items():
            table.add_row(strategy, ", ".join("none" if run["best_value"] is None else f"{run['best_value']:.4g}"
                                              for run in runs), ", ".join(str(run["feasible"]) for run in runs))
        console.print(table)
        scored = numbers["suite"]
        metrics = sorted({key for row in scored.values() for key in row if key != "effective_params"})
        table = Table("config", "effective params", *metrics, title=f"budget {budget} on the suite")
        for stem, row in sorted(scored.items(), key=lambda item: item[1]["effective_params"]):
            table.add_row(shown(stem), f"{row['effective_params']:,}", *(f"{row.get(m, float('nan')):.4g}"
                                                                          for m in metrics))
        console.print(table)
    say(f"reproduce: {result['command']}")


@bench_app.command("workers")
def bench_workers_command(
        checkpoint: Annotated[str, typer.Option("--checkpoint", help="Full checkpoint, or nano.")] = "nano",
        configs: Annotated[list[str], typer.Option("--configs", help="Config files, folders or a bundled set.")] = None,
        suite: SuiteOpt = "nano", limit: LimitOpt = None,
        workers: Annotated[str, typer.Option(help="Worker counts to compare with serial, comma-separated.")] = "1,2",
        work_dir: Annotated[Path, typer.Option(help="Scratch space.")] = Path("bench-work/workers"),
        as_json: JsonOpt = False) -> None:
    """A serial sweep against the same sweep on Ray workers: wall time, ratios, identical rows."""
    from matlab.bench.sweep_bench import bench_workers
    from matlab.slice_config.bundled import resolve_suite

    with reported_errors():
        paths = config_paths(configs or ["nano"])
        try:
            counts = tuple(int(text) for text in workers.split(","))
        except ValueError:
            raise usage_error(f"--workers: cannot read {workers!r}; write counts like 1,2") from None
        result = bench_workers(checkpoint, paths, resolve_suite(suite), work_dir, limit=limit, workers=counts)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table("run", "sweep seconds", "over serial", "rows identical to serial",
                  title=shown(f"sweeping {len(paths)} configs of {checkpoint}"))
    for name, numbers in result["runs"].items():
        table.add_row(name, f"{numbers['sweep_seconds']:.1f}", f"{result['over_serial'][name]:.2f}",
                      str(result["rows_identical"].get(name, "")))
    console.print(table)
    say(f"model load {result['model_load_seconds']:.2f} s once per worker; per config "
        f"{result['config_seconds_median']:.1f} s (median, serial)")


@bench_app.command("runtimes")
def bench_runtimes_command(
        out: Annotated[Path, typer.Option("--out", help="The markdown matrix (JSON beside it).")] = Path(
            "reports/runtimes.md"),
        runtime: Annotated[list[str], typer.Option(
            "--runtime", help="Only these runtimes (default: every installed one).")] = [],  # noqa: B006
        kind: Annotated[list[str], typer.Option("--kind", help="Only these slice kinds.")] = []) -> None:  # noqa: B006
    """Every slice kind in every installed runtime, compared with transformers (reports/runtimes.md)."""
    from matlab.bench.runtime_matrix import run_matrix, write_matrix
    from matlab.cli.common import RichProgress
    from matlab.errors import InputError
    from matlab.io.resolve import resolve_checkpoint
    from matlab.runtimes.envs import installed_versions

    command = shlex.join(["matformer", "bench", "runtimes", "--out", str(out), *[f"--runtime={r}" for r in runtime],
                          *[f"--kind={k}" for k in kind]])
    with reported_errors():
        chosen = tuple(runtime) or tuple(installed_versions())
        if not chosen:
            raise InputError("no runtime is installed: run `matformer runtimes install vllm mlx-lm` (and llama.cpp)")
        with RichProgress("runs") as progress:
            rows = run_matrix(chosen, resolve_checkpoint("nano"), tuple(kind) or None, progress=progress,
                              on_row=lambda row: say(shown(f"{row.base} {row.kind.name}: {row.result.line()} "
                                                           f"(predicted: {row.predicted})")))
        write_matrix(rows, command, out)
    wrong = [row for row in rows if not row.agrees]
    say(f"wrote {out}: {len(rows)} runs, {len(wrong)} disagreeing with the rules")
    if wrong:
        raise typer.Exit(1)


@bench_app.command("formats-kl")
def bench_formats_kl_command(checkpoint: Annotated[Optional[Path], typer.Option(
                                 "--checkpoint", help="A base llama.cpp loads (default: the E4B-shaped runtime test "
                                                      "model, built here).")] = None,
                             tokens: Annotated[int, typer.Option(min=2, max=4096, help="Tokens compared.")] = 64,
                             kquants: Annotated[bool, typer.Option(
                                 "--kquants", help="llama.cpp's presets and mixed K-quants, on the test model at "
                                                   "hidden 256 (whole super-blocks).")] = False,
                             as_json: JsonOpt = False) -> None:
    """Our KL of slices at their weight formats against llama.cpp's on the exported GGUF files."""
    from matlab.bench.formats_kl import bench_formats_kl
    from matlab.cli.common import RichProgress

    with reported_errors(), RichProgress() as progress:
        results, base = bench_formats_kl(checkpoint, tokens, progress, kquants)
    if as_json:
        console.print_json(json.dumps({"base": base, "results": [result.as_dict() for result in results]}))
        return
    table = Table("slice", "formats", "KL ours", "KL llama.cpp", "llama.cpp - ours", "KL without formats",
                  "top-1 ours / llama.cpp", "GGUF tensor bytes (counted = file)", "file bytes",
                  title=shown(f"KL to the full float32 model over {results[0].positions if results else 0} tokens, "
                              f"on {base}"))
    for result in results:
        table.add_row(shown(result.config), result.formats, f"{result.ours:.5f}", f"{result.llama_cpp:.5f}",
                      f"{result.difference:+.5f}", f"{result.unquantized:.5f}",
                      f"{result.top1_ours} / {result.top1_llama_cpp}",
                      f"{result.counted_bytes:,} {'=' if result.counted_bytes == result.file_tensor_bytes else '!='} "
                      f"{result.file_tensor_bytes:,}", f"{result.file_bytes:,}")
    console.print(table)


@bench_app.command("formats-search")
def bench_formats_search_command(
        checkpoint: Annotated[str, typer.Option("--checkpoint", help="Full checkpoint, or nano.")] = "nano",
        fractions: Annotated[str, typer.Option(help="Byte budgets as shares of the full model's bf16 GGUF bytes.")
                             ] = "0.35,0.6",
        formats: Annotated[str, typer.Option(help="Formats of the mixed search.")] = "q8_0,q5_0,q4_0",
        suite: SuiteOpt = "nano",
        work_dir: Annotated[Path, typer.Option(help="Scratch space (searches, sweeps).")] = Path("bench-formats"),
        max_evals: Annotated[int, typer.Option(min=1)] = 150, seed: int = 0, limit: LimitOpt = None,
        as_json: JsonOpt = False) -> None:
    """Widths, skips and formats searched together against slicing in bf16 and quantizing after."""
    from matlab.bench.formats_bench import bench_formats_search
    from matlab.cli.common import RichProgress, quiet_evaluation
    from matlab.slice_config.bundled import resolve_suite

    with reported_errors(), quiet_evaluation(search=True), RichProgress() as progress:
        result = bench_formats_search(checkpoint, [float(part) for part in fractions.split(",")],
                                      tuple(part.strip() for part in formats.split(",")), resolve_suite(suite),
                                      work_dir, max_evals=max_evals, seed=seed, limit=limit, progress=progress)
    if as_json:
        console.print_json(json.dumps(result))
        return
    _print_scored_budgets(result, lambda tag: f"{tag} of the full model's bf16 file", kl_places=4)


@bench_app.command("presets")
def bench_presets_command(
        checkpoint: Annotated[str, typer.Option("--checkpoint", help="Full checkpoint, or nano.")] = "nano",
        presets: Annotated[str, typer.Option(help="llama.cpp file types; each one's full-model bytes is a budget.")
                           ] = "q4_k_m,q5_k_m",
        formats: Annotated[str, typer.Option(help="Formats of the search without K-quants.")] = "q8_0,q5_0,q4_0",
        k_formats: Annotated[str, typer.Option(help="Formats of the search with K-quants.")
                             ] = "q8_0,q6_k,q5_k,q5_0,q4_k,q4_0",
        suite: SuiteOpt = "nano",
        work_dir: Annotated[Path, typer.Option(help="Scratch space (searches, sweeps).")] = Path("bench-presets"),
        max_evals: Annotated[int, typer.Option(min=1)] = 120, seed: int = 0, limit: LimitOpt = None,
        as_json: JsonOpt = False) -> None:
    """The full model at each llama.cpp preset against the formats search at the same bytes."""
    from matlab.bench.formats_bench import bench_presets_search
    from matlab.cli.common import RichProgress, quiet_evaluation
    from matlab.slice_config.bundled import resolve_suite

    def names(text: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in text.split(",") if part.strip())

    with reported_errors(), quiet_evaluation(search=True), RichProgress() as progress:
        result = bench_presets_search(checkpoint, names(presets), names(formats), names(k_formats),
                                      resolve_suite(suite), work_dir, max_evals=max_evals, seed=seed, limit=limit,
                                      progress=progress)
    if as_json:
        console.print_json(json.dumps(result))
        return
    _print_scored_budgets(result, lambda preset: f"the full model at {preset}", kl_places=6)


def _print_scored_budgets(result: dict, budget_words, kl_places: int) -> None:
    """A formats bench's configs per budget (bytes, KL, shape, formats, suite scores), then its searches."""
    for key, budget in result["budgets"].items():
        configs = budget["configs"]
        tasks = sorted({name for config in configs.values() for name in config if ":" in name})
        table = Table("slice", "GGUF bytes", "KL", "skipped", "widths", "formats", *tasks,
                      title=f"budget {budget['budget_bytes']:,} bytes ({budget_words(key)})")
        for stem, config in configs.items():
            table.add_row(shown(stem), f"{config['bytes']:,}", f"{config['kl']:.{kl_places}f}",
                          str(config["layers_skipped"]), str(config["ffn_widths"]),
                          shown(config["weight_formats"] or ""), *(f"{config[task]:.4f}" for task in tasks))
        console.print(table)
    for name, search in result["searches"].items():
        say(f"{name}: {search['candidates_per_minute']} candidates/minute, {search['evaluated']} evaluated, "
            f"best KL {search['best_value']}, quantize {search['quantize_seconds']}")


@bench_app.command("formats-speed")
def bench_formats_speed_command(
        checkpoint: Annotated[str, typer.Option("--checkpoint", help="Full checkpoint, or nano.")] = "nano",
        max_bytes: Annotated[str, typer.Option(help="Budget in GGUF bytes (the plain search gets it in bf16).")
                             ] = "3689571",
        formats: Annotated[str, typer.Option(help="Formats of the search with formats.")] = "q8_0,q5_0,q4_0",
        work_dir: Annotated[Path, typer.Option(help="Scratch space (searches).")] = Path("bench-formats-speed"),
        max_evals: Annotated[int, typer.Option(min=1)] = 120, rounds: Annotated[int, typer.Option(min=1)] = 2,
        as_json: JsonOpt = False) -> None:
    """Candidates per minute of the search with weight formats against the search without."""
    from matlab.bench.formats_speed import bench_formats_speed
    from matlab.cli.common import RichProgress, parse_size_option, quiet_evaluation

    budget = parse_size_option(max_bytes, "--max-bytes")
    with reported_errors(), quiet_evaluation(search=True), RichProgress() as progress:
        result = bench_formats_speed(checkpoint, budget,
                                     tuple(part.strip() for part in formats.split(",")), work_dir,
                                     max_evals=max_evals, rounds=rounds, progress=progress)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table("search", "candidates/min per round", "mean effective params", "s per candidate",
                  "same slices as plain", "median s ratio on them",
                  title=f"budget {result['max_bytes']:,} bytes, {result['max_evals']} evaluations per search")
    for kind, search in result["searches"].items():
        rounds_ = search["rounds"]
        table.add_row(kind, ", ".join(str(run["candidates_per_minute"]) for run in rounds_),
                      ", ".join(f"{run['mean_effective_params']:,}" for run in rounds_),
                      ", ".join(str(run["mean_seconds_per_candidate"]) for run in rounds_),
                      str(search["same_slices"]), str(search["median_seconds_ratio_on_same_slices"]))
    console.print(table)


@bench_app.command("new-facts")
def bench_new_facts_command(
        out: Annotated[Path, typer.Option(help="Folder for train.jsonl and the new-facts suite.")],
        replay: Annotated[int, typer.Option(min=0, help="Documents of the shipped nano world interleaved.")] = 0
) -> None:
    """Training text and a question suite about 64 people nano never saw (fine-tuning benchmarks)."""
    from matlab.training.experiments import write_new_facts

    with reported_errors():
        written = write_new_facts(out, replay=replay)
    for path in written:
        say(f"wrote {shown(path)}")


@bench_app.command("quantize")
def bench_quantize_command(
        checkpoint: Annotated[str, typer.Option("--checkpoint", help="Checkpoint directory, or nano.")] = "nano",
        formats: Annotated[str, typer.Option(help="Formats, comma-separated.")] = "q8_0,q5_0,q4_0",
        as_json: JsonOpt = False) -> None:
    """The one-time cost of `search --formats`: every text weight through each format and back."""
    from matlab.bench.quantize_bench import bench_quantize, numpy_threads_note
    from matlab.cli.common import RichProgress

    with reported_errors(), RichProgress() as progress:
        result = bench_quantize(checkpoint, tuple(part.strip() for part in formats.split(",")), progress)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table("format", "seconds", "M elements", "M elements/s",
                  title=shown(f"{result['tensors']} text weights of {checkpoint} (read in {result['read_seconds']} s)"))
    for fmt, numbers in result["formats"].items():
        table.add_row(fmt, f"{numbers['seconds']:.2f}", f"{numbers['elements'] / 1e6:,.1f}",
                      f"{numbers['million_elements_per_second']:.1f}")
    console.print(table)
    say(numpy_threads_note())



@bench_app.command("contention")
def bench_contention_command(
        workloads: Annotated[str, typer.Option(help="Comma-separated: search, evaluate, heal, latency (a sweep's "
                                                    "latency rounds, for their spread).")] = "search,evaluate,heal",
        rounds: Annotated[int, typer.Option(min=1, help="Runs of each variant at rest and under load.")] = 2,
        loops: Annotated[Optional[int], typer.Option(min=0, help="Busy loops beside the work (default: one per "
                                                                  "core).")] = None,
        limit: Annotated[int, typer.Option(min=1, help="Documents per task of the evaluate workload.")] = 40,
        as_json: JsonOpt = False) -> None:
    """The tool's work at rest and beside busy loops, as shipped against the thread policy."""
    from matlab.bench.contention import bench_contention
    from matlab.cli.common import RichProgress

    chosen = tuple(part.strip() for part in workloads.split(",") if part.strip())
    with reported_errors(), RichProgress() as progress:
        result = bench_contention(chosen, rounds, loops, limit, progress)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table("workload", "variant", "rest s (median, min-max)", "load s (median, min-max)", "CPU s rest/load",
                  "load / (rest / share)", "target",
                  title=f"{result['cores']} cores, {result['busy_loops']} busy loops (CPU share {result['cpu_share']})")
    for row in result["rows"]:
        if "rest" not in row:
            table.add_row(row["workload"], row["variant"], f"x{row['rest_ratio']}", f"x{row['load_ratio']}", "", "",
                          "")
            continue
        rest, load = row["rest"], row["load"]
        table.add_row(row["workload"], row["variant"],
                      f"{rest['wall_median']:.1f} ({rest['wall_min']:.1f}-{rest['wall_max']:.1f})",
                      f"{load['wall_median']:.1f} ({load['wall_min']:.1f}-{load['wall_max']:.1f})",
                      f"{rest['cpu_median']:.0f}/{load['cpu_median']:.0f}", f"{row['load_over_expected']:.2f}",
                      "met" if row["meets_target"] else "missed")
    console.print(table)
    spreads = {row["variant"]: row["rest"]["latency_spread_median"] for row in result["rows"]
               if "rest" in row and row["rest"].get("latency_spread_median")}
    if spreads:
        say("latency rounds at rest, median fastest/slowest decode rate: "
            + ", ".join(f"{variant} {spread:.3f}" for variant, spread in spreads.items()))
