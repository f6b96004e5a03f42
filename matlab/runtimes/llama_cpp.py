"""llama.cpp, through llama-cpp-python, compiled in its own environment from its source (whose
tree also holds llama.cpp's own converter, `convert_hf_to_gguf.py`, and its `gguf-py`).

Measured (reports/runtimes.md): its Gemma 3n loader fixes the base's shape (the constants below
are its own, quoted from the vendored tree), aborts the process (GGML_ASSERT) when a layer
before the KV-shared region is skipped, and builds every layer at layer 0's FFN width. A GGUF
with a type per tensor from a slice's weight_formats ran and matched (`conform --type per-tensor`).
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

from matlab.formats import FORMATS
from matlab.runtimes.base import (
    CRASHES,
    MATRIX,
    REFUSES,
    Environment,
    Layout,
    Rule,
    Runtime,
    prefix_kept,
    uniform_width,
)
from matlab.util.runs import layer_spans

LLAMA_CPP_PYTHON = "0.3.36"  # the release its rules were measured on, and the one compiled

# Its Gemma 3n loader never reads these from the GGUF: llama-hparams.h (n_altup = 4,
# laurel_rank = 64, n_embd_altup = 256), models/gemma3n.cpp (n_layer_kv_from_start = 20) and
# the sparse layers `il < n_layer_sparsity` (10), in llama-cpp-python 0.3.36's vendored tree.
FIXED = {"hidden_size_per_layer_input": 256, "laurel_rank": 64, "altup_num_inputs": 4}
LAYERS_BEFORE_SHARED, SPARSE_LAYERS = 20, 10


def fixed_shape(plan) -> str | None:
    facts = plan.facts
    text = facts.text_config
    wrong = [f"{key} {text.get(key)} (fixed at {value})" for key, value in FIXED.items() if text.get(key) != value]
    if facts.first_shared_layer != LAYERS_BEFORE_SHARED:
        wrong.append(f"{facts.first_shared_layer} layers before the KV-shared region (fixed at {LAYERS_BEFORE_SHARED})")
    if facts.sparse_layers != list(range(SPARSE_LAYERS)):
        wrong.append(f"sparse layers {layer_spans(facts.sparse_layers) or 'none'} (fixed at 0..{SPARSE_LAYERS - 1})")
    if wrong:
        return f"its Gemma 3n loader fixes the base's shape, and this base has {'; '.join(wrong)}: no slice of it loads"
    return None


def source_tree(environment: Path) -> Path:
    """The unpacked llama-cpp-python source in a llama.cpp environment."""
    return environment / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"


def build(pin: str, directory: Path, python: Path, log: Callable[[str], None]) -> tuple[str, ...]:
    """Compile llama-cpp-python (`pin`) from its sdist, kept unpacked for the converter; returns
    the tree's gguf-py for pip, which matches that converter exactly (PyPI's gguf may lag it)."""
    from matlab.runtimes.envs import run_step

    source = source_tree(directory)
    if not source.is_dir():
        download = directory / "dl"
        run_step([str(python), "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", pin, "-d",
                  str(download)], directory, log)
        with tarfile.open(next(download.glob("llama_cpp_python-*.tar.gz"))) as archive:
            archive.extractall(directory / "src", filter="data")
    built = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('llama_cpp_python'))"],
                           capture_output=True, text=True)
    tree = source / "vendor" / "llama.cpp"
    if built.returncode == 0 and built.stdout.strip() == LLAMA_CPP_PYTHON:
        return (str(tree / "gguf-py"),)  # compiled by an install that stopped later
    # Only the library is needed: no multimodal helper, tests, examples or tools (halves the build).
    # Not -march=native: on a CPU that reports AMX to a VM that does not enable its tile state
    # (this build machine), the native build's AMX kernels for quantized types die with SIGILL or
    # SIGSEGV while f32 runs; AVX2 kernels are what most users' machines run anyway.
    flags = ("-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
             "-DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
             "-DLLAMA_BUILD_SERVER=OFF")
    log(f"llama.cpp: compiling {pin} (about 30 minutes on 2 cores)")
    run_step([str(python), "-m", "pip", "install", "--quiet", str(source)], directory, log,
             variables={"CMAKE_ARGS": flags, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)})
    return (str(tree / "gguf-py"),)


RUNTIME = Runtime(
    name="llama.cpp", package="llama-cpp-python", measured_version=LLAMA_CPP_PYTHON, measured=True,
    layout=Layout("GGUF from llama.cpp's converter", fill_consumer_kv=True), formats=FORMATS,
    rules=(Rule("fixed-shape", fixed_shape, REFUSES, f"measured on nano: {MATRIX}"),
           Rule("uniform-width", uniform_width, REFUSES, f"measured: {MATRIX}"),
           Rule("kv-prefix", prefix_kept, CRASHES, f"measured (GGML_ASSERT, SIGABRT): {MATRIX}")),
    # The converter needs torch (CPU) and transformers; the package itself is compiled (`build`).
    environment=Environment(requirements=("torch==2.13.0", "numpy", "sentencepiece", "protobuf", "transformers"),
                            minutes=35, build=build),
    runner="llamacpp_runner.py",
)
