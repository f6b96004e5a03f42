"""llama.cpp's own converter, writing each tensor in the type a slice config's weight formats give it.

    python llamacpp_convert.py TREE CHECKPOINT OUT.gguf TYPES.json
    python llamacpp_convert.py TREE CHECKPOINT OUT.gguf --names NAMES.json OUTTYPE

TREE is the llama.cpp source tree (its `convert_hf_to_gguf.py`, `conversion/` and `gguf-py`);
TYPES.json maps each 2-D tensor's name, as the converter sees it (the text model's name:
`language_model.` dropped), to a GGUF type name ("q4_0"). The converter does everything else as
it always does (names, stacking, padding, metadata, tokenizer, F32 for 1-D tensors); only its
`tensor_force_quant` hook, which its model classes use to force a type on a tensor, answers
from the map, and a 2-D tensor missing from it stops the conversion (nothing is guessed).
Quantizing is the converter's own call into its gguf-py's reference quantizers, the same code
as llama.cpp's own quantizer for these types.

With `--names`, every tensor is written at OUTTYPE (the checkpoint's own type: f32, bf16) as the
converter always writes it, and NAMES.json records each tensor's GGUF name by its name here:
the first step of a file llama-quantize types (`llamacpp_quantize.py` with a type per tensor).

Runs in the llama.cpp environment; imports nothing from `matlab`.
"""

import json
import sys
from pathlib import Path


def main() -> int:
    tree, checkpoint, out, types_file = sys.argv[1:5]
    names_file, outtype = (sys.argv[5], sys.argv[6]) if types_file == "--names" else (None, "f32")
    sys.path[:0] = [tree, str(Path(tree) / "gguf-py")]
    import convert_hf_to_gguf as converter
    import gguf

    types = {} if names_file else json.loads(Path(types_file).read_text(encoding="utf-8"))
    names: dict[str, str] = {}
    find_class = converter.get_model_class

    def typed_class(*args, **kwargs):
        base = find_class(*args, **kwargs)

        class Typed(base):
            model_arch = base.model_arch

            def tensor_force_quant(self, name, new_name, bid, n_dims):
                if names_file is not None:
                    names[name] = new_name
                    return super().tensor_force_quant(name, new_name, bid, n_dims)
                if n_dims < 2:
                    return super().tensor_force_quant(name, new_name, bid, n_dims)
                if name not in types:
                    raise ValueError(f"no weight format for tensor {name} ({new_name}); the slice's formats "
                                     "name every 2-D text tensor it stores")
                return gguf.GGMLQuantizationType[types[name].upper()]

        return Typed

    converter.get_model_class = typed_class
    sys.argv = ["convert_hf_to_gguf.py", checkpoint, "--outtype", outtype, "--outfile", out]
    converter.main()
    if names_file is not None:
        Path(names_file).write_text(json.dumps(names), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
