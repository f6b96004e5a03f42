"""The model class the vLLM plugin registers (`matlab.runtimes.vllm_plugin`). Imported by vLLM,
in vLLM's environment only: it imports vLLM at the top.

It is vLLM's own `Gemma3nForCausalLM` with what that class lacks for a text-only checkpoint:
- `forward` computes the token part of the per-layer embeddings from the token ids (vLLM's
  multimodal class does the same in `embed_input_ids`; its text class never does), and hands it
  to the inherited forward, whose `get_per_layer_inputs` adds the projection part and scales
  the sum by 1/sqrt(2), as transformers' `project_per_layer_inputs` does;
- `load_weights` folds transformers' `per_layer_projection_scale` (hidden_size ** -0.5, applied
  before the per-layer projection norm) into the projection's weight: vLLM registers that
  scale and never applies it, which acts as an RMSNorm epsilon hidden_size times larger;
- checkpoints whose text weights sit under the multimodal prefix (`model.language_model.`, as
  transformers saves a text model loaded from a multimodal checkpoint) load too;
- LoRA is declared (`SupportsLoRA`): vLLM's Gemma 3n classes do not declare it, though their
  packed modules are mapped; this class inherits that mapping.
Prompt embeddings are refused: the per-layer embeddings are looked up by token id, and a request
made of embeddings has none.
"""

from __future__ import annotations

import torch
import vllm
from vllm.model_executor.models.gemma3n import Gemma3nForCausalLM
from vllm.model_executor.models.interfaces import SupportsLoRA
from vllm.model_executor.models.utils import WeightsMapper

from matlab.runtimes.vllm_plugin import ARCHITECTURE, supported, unsupported_message

PROJECTION = "model.self_decoder.per_layer_model_projection.weight"


class MatformerGemma3nForCausalLM(Gemma3nForCausalLM, SupportsLoRA):
    hf_to_vllm_mapper = Gemma3nForCausalLM.hf_to_vllm_mapper | WeightsMapper(
        orig_to_new_prefix={"model.language_model.": "model.", "lm_head.": None})
    embedding_modules: dict[str, str] = {}  # the embedding tables are not LoRA targets

    def __init__(self, *, vllm_config, prefix: str = ""):
        if not supported(vllm.__version__):
            raise ValueError(unsupported_message(vllm.__version__))
        if getattr(vllm_config.model_config, "enable_prompt_embeds", False):
            raise ValueError(f"{ARCHITECTURE} looks its per-layer embeddings up by token id; prompt embeddings "
                             "have none: serve it without --enable-prompt-embeds")
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        text = self.config
        self._per_layer_shape = (text.num_hidden_layers, text.hidden_size_per_layer_input)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, *, per_layer_inputs=None,
                intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if per_layer_inputs is None and input_ids is not None:
            per_layer_inputs = self.model.get_per_layer_input_embeddings(input_ids).reshape(
                -1, *self._per_layer_shape)
        return super().forward(input_ids, positions, per_layer_inputs=per_layer_inputs,
                               intermediate_tensors=intermediate_tensors, inputs_embeds=inputs_embeds, **kwargs)

    def load_weights(self, weights):
        loaded = super().load_weights(weights)
        if PROJECTION in loaded:  # only where this load wrote it: a partial reload must not scale twice
            with torch.no_grad():
                self.get_parameter(PROJECTION).mul_(self.config.hidden_size ** -0.5)
        return loaded
