"""Quantize a GGUF file with llama.cpp's own quantizer (through llama-cpp-python).

    python llamacpp_quantize.py IN.gguf OUT.gguf TYPE      (TYPE: q4_0, q4_k_m, q5_k_m, q6_k)

Runs in the llama.cpp environment; imports nothing from `matlab`.
"""

import ctypes
import sys

import llama_cpp

FTYPES = {"q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
          "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M, "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K}


def main() -> int:
    source, target, weight_type = sys.argv[1:4]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[weight_type]
    failed = llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params))
    if failed:
        print(f"error: llama_model_quantize returned {failed} for {source} -> {weight_type}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
