"""llama.cpp through llama-cpp-python: `--model` is a .gguf file; every position's logits kept.

A refused model surfaces in Python only as "Failed to load model from file", while llama.cpp's
own reason (e.g. `check_tensor_dims: ... wrong shape`) goes to its log, which `verbose=False`
silences during the load: error-level log lines are kept and added to the error text. A C
assert (GGML_ASSERT) aborts the process; its message is the last line of stderr.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _protocol import installed_version, run, top_from_logits  # noqa: E402

# An abort's message (GGML_ASSERT ...) stays the last line of stderr, not a gdb backtrace.
os.environ.setdefault("GGML_NO_BACKTRACE", "1")
GGML_LOG_LEVEL_ERROR = 4  # vendor/llama.cpp/ggml/include/ggml.h (llama_cpp/_logger.py says 3)
llama_errors: list[str] = []
log_callback = None  # kept referenced: llama.cpp calls it for as long as the process runs


def keep_error_lines() -> None:
    global log_callback
    import ctypes

    import llama_cpp

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level == GGML_LOG_LEVEL_ERROR and text.strip():
            llama_errors.append(text.decode("utf-8", "replace").strip())

    log_callback = on_log
    llama_cpp.llama_log_set(log_callback, ctypes.c_void_p(0))


def load(model_path: str, n_tokens: int, top_k: int):
    from llama_cpp import Llama

    keep_error_lines()
    try:
        return Llama(model_path=model_path, logits_all=True, n_ctx=max(n_tokens, 64), n_threads=2,
                     verbose=False)
    except ValueError as exc:
        if llama_errors:
            raise ValueError(f"{exc} (llama.cpp: {'; '.join(llama_errors)})") from exc
        raise


def compute(llama, tokens: list[int], top_k: int):
    llama.eval(tokens)
    return top_from_logits(llama.scores[: len(tokens)], top_k)


if __name__ == "__main__":
    run("llama.cpp", installed_version("llama_cpp_python", "llama-cpp-python"), load, compute)
