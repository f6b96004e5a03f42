"""Quantize a GGUF file with llama.cpp's own quantizer (`llama_model_quantize`, through llama-cpp-python).

    python llamacpp_quantize.py IN.gguf OUT.gguf PRESET [TYPES.json]

PRESET is a llama.cpp file type (q2_k, q3_k_s, q3_k_m, q3_k_l, q4_0, q4_k_s, q4_k_m, q5_k_s,
q5_k_m, q6_k, q8_0). TYPES.json, where given, maps GGUF tensor names to the type each is to be
quantized to (llama-quantize's --tensor-type, its `tt_overrides`; the token embedding through
--token-embedding-type): a type per tensor, with llama.cpp's own fallbacks where rows are not
whole blocks. No importance matrix.

Runs in the llama.cpp environment; imports nothing from `matlab`.
"""

import ctypes
import json
import re
import sys

import llama_cpp

FTYPES = {"q2_k": "Q2_K", "q3_k_s": "Q3_K_S", "q3_k_m": "Q3_K_M", "q3_k_l": "Q3_K_L", "q4_0": "Q4_0",
          "q4_k_s": "Q4_K_S", "q4_k_m": "Q4_K_M", "q5_k_s": "Q5_K_S", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K",
          "q8_0": "Q8_0"}
# ggml's `enum ggml_type`, as gguf numbers it.
GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q2_k": 10, "q3_k": 11,
              "q4_k": 12, "q5_k": 13, "q6_k": 14, "bf16": 30}
TOKEN_EMBEDDING = "token_embd.weight"


def main() -> int:
    source, target, preset = sys.argv[1:4]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{FTYPES[preset]}")
    keep = None
    if len(sys.argv) > 4:
        with open(sys.argv[4], encoding="utf-8") as handle:
            types = json.load(handle)
        if TOKEN_EMBEDDING in types:
            params.token_embedding_type = GGML_TYPES[types.pop(TOKEN_EMBEDDING)]
        keep = [(f"^{re.escape(name)}$".encode(), GGML_TYPES[kind]) for name, kind in types.items()]
        overrides = (llama_cpp.llama_model_tensor_override * (len(keep) + 1))()
        for index, (pattern, kind) in enumerate(keep):
            overrides[index].pattern, overrides[index].type = pattern, kind
        overrides[len(keep)].pattern = None  # the list ends at a null pattern
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    failed = llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params))
    if failed:
        print(f"error: llama_model_quantize returned {failed} for {source} -> {preset}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
