"""The runtime test model: E4B's structure as transformers reads it, a tokenizer that
SentencePiece and transformers agree on, and logits that a runtime's small numerical
differences cannot move far."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from matlab.errors import OutputExistsError
from matlab.runtimes.testmodel import write_runtime_test_model

TEXTS = ["the quamu of dorsen is 42.", "Straße über déjà vu", "  two spaces,\ttabs\nand a newline",
         "unseen letters: 日本語 ✓ 🤖", "Karitomu 12345 naïve!"]


def _logits(model, token_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(token_ids).logits[0].double()


def _token_ids(vocab_size: int, count: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(4)
    return torch.cat([torch.tensor([2]), torch.randint(0, vocab_size, (count - 1,), generator=generator)])[None]


def test_transformers_loads_e4b_structure(runtime_model):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(runtime_model, output_loading_info=True)
    assert type(model).__name__ == "Gemma3nForCausalLM" and not info["missing_keys"]
    config = model.config
    assert config.model_type == "gemma3n_text" and config.num_hidden_layers == 35
    modes = config.kv_sharing_modes
    assert modes.index("reuse") == 20 and modes[20:] == ["reuse"] * 15
    assert [layer for layer, mode in enumerate(modes) if mode == "store"] == [18, 19]
    assert (config.layer_types[18], config.layer_types[19]) == ("sliding_attention", "full_attention")
    assert config.layer_types[:5] == ["sliding_attention"] * 4 + ["full_attention"] and config.layer_types[:5] * 7 == config.layer_types
    assert [layer for layer, sparsity in enumerate(config.activation_sparsity_pattern) if sparsity > 0] == list(range(10))
    assert all(isinstance(sparsity, float) for sparsity in config.activation_sparsity_pattern)
    assert (config.hidden_size_per_layer_input, config.laurel_rank, config.altup_num_inputs) == (256, 64, 4)
    assert config.vocab_size == config.vocab_size_per_layer_input
    assert {layer.mlp.intermediate_size for layer in model.model.layers} == {256}
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}


def test_checkpoint_stores_consumer_kv_in_float32(runtime_model):
    with safe_open(runtime_model / "model.safetensors", "pt") as weights:
        names = set(weights.keys())
        dtypes = {weights.get_slice(name).get_dtype() for name in names}
    assert dtypes == {"F32"}
    for layer in range(35):  # llama.cpp's loader wants k/v in every layer, consumers included
        assert {f"model.layers.{layer}.self_attn.{name}.weight" for name in ("k_proj", "v_proj", "k_norm")} <= names
    assert (runtime_model / "model.safetensors").stat().st_size < 40 * 2**20


def test_sentencepiece_model_has_gemma_specials_and_round_trips(runtime_model):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(runtime_model / "tokenizer.model"))
    config = json.loads((runtime_model / "config.json").read_text())
    assert processor.vocab_size() == config["vocab_size"]
    assert (processor.pad_id(), processor.eos_id(), processor.bos_id(), processor.unk_id()) == (0, 1, 2, 3)
    assert [processor.id_to_piece(index) for index in range(4)] == ["<pad>", "<eos>", "<bos>", "<unk>"]
    assert (config["pad_token_id"], config["eos_token_id"], config["bos_token_id"]) == (0, 1, 2)
    for text in TEXTS:
        ids = processor.encode(text)
        assert processor.decode(ids) == text and processor.unk_id() not in ids
    robot = processor.encode("🤖")  # not in the corpus: UTF-8 bytes
    assert len(robot) == 4 and all(processor.is_byte(index) for index in robot)
    assert len(processor.encode("the quamu of dorsen")) < len("the quamu of dorsen") / 2  # merges were learned


def test_auto_tokenizer_agrees_with_sentencepiece(runtime_model):
    import sentencepiece
    from transformers import AutoTokenizer

    processor = sentencepiece.SentencePieceProcessor(model_file=str(runtime_model / "tokenizer.model"))
    tokenizer = AutoTokenizer.from_pretrained(runtime_model)
    assert len(tokenizer) == processor.vocab_size()
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == [processor.bos_id(), *processor.encode(text)]
        assert tokenizer.decode(processor.encode(text)) == text


def test_unbiased_sparsity_std_moves_logits_little(runtime_model, monkeypatch):
    """llama.cpp divides the Gaussian top-k std by n-1 (src/models/gemma3n.cpp, gaussian_topk),
    transformers by n; on this model that may move logits by a hundredth at most."""
    from transformers import AutoModelForCausalLM
    from transformers.models.gemma3n import modeling_gemma3n

    model = AutoModelForCausalLM.from_pretrained(runtime_model).eval()
    token_ids = _token_ids(model.config.vocab_size)
    reference = _logits(model, token_ids)

    def unbiased_topk(self, inputs: torch.Tensor) -> torch.Tensor:
        multiplier = torch.distributions.normal.Normal(0, 1).icdf(torch.tensor(self.activation_sparsity))
        cutoff = inputs.mean(-1, keepdim=True) + inputs.std(-1, keepdim=True, unbiased=True) * multiplier.to(inputs.dtype)
        return torch.nn.functional.relu(inputs - cutoff)

    monkeypatch.setattr(modeling_gemma3n.Gemma3nTextMLP, "_gaussian_topk", unbiased_topk)
    unbiased = _logits(model, token_ids)
    difference = (reference - unbiased).abs().max().item()
    assert 0 < difference < 0.02  # the patch took effect, and barely shows
    assert reference.std(dim=-1).min().item() > 0.1  # logits spread over the vocabulary
    assert reference.argmax(-1).unique().numel() >= 16  # next tokens depend on the context
    assert torch.equal(reference.argmax(-1), unbiased.argmax(-1))


def test_same_seed_same_files_and_refuses_a_used_directory(runtime_model, tmp_path):
    again = write_runtime_test_model(tmp_path / "again", seed=0)
    other = write_runtime_test_model(tmp_path / "other", seed=1)
    files = sorted(path.name for path in runtime_model.iterdir())
    assert files == sorted(path.name for path in again.iterdir())
    assert all((runtime_model / name).read_bytes() == (again / name).read_bytes() for name in files)
    assert (runtime_model / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    assert (runtime_model / "tokenizer.model").read_bytes() == (other / "tokenizer.model").read_bytes()

    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="exists and is not empty"):
        write_runtime_test_model(used)
    assert sorted(path.name for path in used.iterdir()) == ["notes.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["again", "other", "used"]


def test_per_layer_embeddings_move_next_tokens(runtime_model):
    """A runtime that drops the per-layer embeddings (vLLM's text-only class) must fail
    conformance on this model: without them the log-probs move by far more than any tolerance."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(runtime_model).eval()
    scales = torch.stack([layer.altup.correct_output_scale for layer in model.model.layers])
    assert scales.min().item() >= 0.5 - 1e-6 and scales.max().item() <= 1.5 + 1e-6
    token_ids = _token_ids(model.config.vocab_size)
    reference = torch.log_softmax(_logits(model, token_ids), -1)
    with torch.no_grad():
        model.model.embed_tokens_per_layer.weight.zero_()
        model.model.per_layer_model_projection.weight.zero_()
    without = torch.log_softmax(_logits(model, token_ids), -1)
    assert (reference - without).abs().max().item() > 1.0  # conformance tolerances are 0.05 to 0.8
