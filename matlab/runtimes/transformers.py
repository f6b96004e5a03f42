"""Hugging Face transformers: the reference every other runtime is compared with, run in this
project's own environment (its `Gemma3nForCausalLM` / `Gemma3nForConditionalGeneration`)."""

from matlab.runtimes.base import FLOAT_ONLY, TRANSFORMERS_LAYOUT, Runtime

RUNTIME = Runtime(
    name="transformers", package="transformers", measured_version="5.24", measured=True,
    layout=TRANSFORMERS_LAYOUT, rules=(FLOAT_ONLY,), runner="transformers_runner.py",
    families=(),  # the reference: every family's slices are its own classes
)
