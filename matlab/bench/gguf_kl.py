"""Closing the loop with llama.cpp: the KL our evaluation gives a slice at its weight formats,
against the KL of llama.cpp running the GGUF file `matformer export` writes for it.

Both are the mean per-token KL divergence of the slice's next-token distribution from the
full, unquantized model's (transformers, float32), on the same tokens and over the whole
vocabulary: ours from the elastic submodel whose weights went through llama.cpp's own
quantizer code (`matlab.formats.cache`), llama.cpp's from its own log-probs. They differ where
llama.cpp computes differently from a float32 model on the same weights: it quantizes the
activations it multiplies with quantized weights to 8 bits (Q8_0 blocks, Q8_K super-blocks for
the K-quants), and its sparsity std divides by
n-1 (`reports/runtimes.md`). The bench (`matformer bench formats-kl`) measures by how much.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from matlab.core.loading import load_model
from matlab.core.submodel import select_submodel
from matlab.runtimes.conform import runner_for, runtime_distributions, sample_tokens
from matlab.runtimes.gguf import PER_TENSOR, convert_to_gguf, gguf_bytes_by_type
from matlab.slice_config import SliceConfig
from matlab.slicing.slicer import slice_checkpoint


@dataclass(frozen=True)
class KLComparison:
    """One slice at its formats: our KL and llama.cpp's, from the same full model on the same tokens."""

    config: str
    formats: str
    ours: float
    llama_cpp: float
    unquantized: float  # the slice in float32, no formats: what the formats add is ours - this
    top1_ours: int  # positions where the slice's top token is the full model's
    top1_llama_cpp: int
    positions: int
    counted_bytes: int  # the GGUF tensor bytes the accounting gives the config
    file_tensor_bytes: int  # the tensor bytes in the file llama.cpp's converter wrote
    file_bytes: int  # the whole file, header, metadata and tokenizer included

    @property
    def difference(self) -> float:
        return self.llama_cpp - self.ours

    def as_dict(self) -> dict:
        return {**asdict(self), "difference": self.difference}


def _kl(full: torch.Tensor, other: torch.Tensor) -> float:
    """Mean over positions of KL(full || other); both [positions, vocab] log-probs."""
    return float((full.exp() * (full - other)).sum(-1).mean())


def _dense(distributions: list[dict[int, float]], vocab: int) -> torch.Tensor:
    dense = torch.full((len(distributions), vocab), -math.inf, dtype=torch.float64)
    for position, distribution in enumerate(distributions):
        for token, logprob in distribution.items():
            dense[position, token] = logprob
    return dense


def _logprobs(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens])).logits[0]
    return torch.log_softmax(logits.double(), dim=-1)


def compare_kl(checkpoint: Path, config: SliceConfig, work: Path, count: int = 64, seed: int = 0,
               timeout: float = 1800) -> KLComparison:
    """Slice `config` (which names weight formats) in llama.cpp's layout into `work`, export it
    with a type per tensor, run it in llama.cpp, and compare its KL with ours."""
    sliced = work / "slice"
    slice_checkpoint(checkpoint, config, sliced, text_only=True, runtime="llama.cpp", force=True)
    gguf_file = convert_to_gguf(sliced, work / "slice.gguf", PER_TENSOR, timeout)
    model_config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    tokens = sample_tokens(checkpoint, model_config, count, seed)
    loaded = load_model(checkpoint, dtype="float32")
    vocab = loaded.model.config.vocab_size
    full = _logprobs(loaded.model, tokens)
    submodel = select_submodel(loaded, config)
    ours = _logprobs(submodel.model, tokens)
    plain = _logprobs(select_submodel(loaded, config.model_copy(update={"weight_formats": None})).model, tokens)
    (work / "llama.cpp").mkdir(exist_ok=True)
    llama = _dense(runtime_distributions(runner_for("llama.cpp"), gguf_file, tokens, vocab, work / "llama.cpp" / "run",
                                         timeout), vocab)
    top = full.argmax(-1)
    return KLComparison(
        config.name, submodel.weight_formats or "", _kl(full, ours), _kl(full, llama), _kl(full, plain),
        int((ours.argmax(-1) == top).sum()), int((llama.argmax(-1) == top).sum()), len(tokens),
        submodel.weight_bytes, sum(gguf_bytes_by_type(gguf_file).values()), gguf_file.stat().st_size)
