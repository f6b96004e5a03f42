"""Tiny random Gemma 3n checkpoints in both layouts, built once per test session."""

from __future__ import annotations

from matlab.util.threads import apply_thread_policy

apply_thread_policy()  # before torch starts: the tests' own process waits as the tool's processes do

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import add_consumer_kv, perturb, tiny_text_config, tiny_text_model, write_tokenizer_files  # noqa: E402


@pytest.fixture(scope="session")
def tiny_multimodal(tmp_path_factory) -> Path:
    from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nForConditionalGeneration, Gemma3nVisionConfig

    directory = tmp_path_factory.mktemp("tiny-multimodal")
    audio = Gemma3nAudioConfig(hidden_size=32, conf_num_attention_heads=2, conf_num_hidden_layers=2,
                               sscp_conv_channel_size=(8, 4), input_feat_size=16)
    vision = Gemma3nVisionConfig(architecture="test_efficientnet", hidden_size=32)
    config = Gemma3nConfig(text_config=tiny_text_config().to_dict(), audio_config=audio.to_dict(),
                           vision_config=vision.to_dict())
    torch.manual_seed(0)
    model = Gemma3nForConditionalGeneration(config)
    perturb(model, seed=1)
    model.save_pretrained(directory, max_shard_size="300KB")
    add_consumer_kv(directory, "model.language_model.", config.text_config)
    write_tokenizer_files(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-text")
    model = tiny_text_model(init_seed=2, perturb_seed=3)
    model.save_pretrained(directory, max_shard_size="300KB")
    add_consumer_kv(directory, "model.", model.config)
    write_tokenizer_files(directory)
    return directory


@pytest.fixture(scope="session")
def sample_ids() -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    return torch.randint(0, 512, (2, 21), generator=generator)


@pytest.fixture(scope="session")
def runtime_model(tmp_path_factory) -> Path:
    """E4B's layer structure at tiny widths, well conditioned, with a SentencePiece tokenizer."""
    from matlab.runtimes.testmodel import write_runtime_test_model

    return write_runtime_test_model(tmp_path_factory.mktemp("runtime-model") / "model", seed=0)
