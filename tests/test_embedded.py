"""The embedded nano checkpoint resolves by name and runs, as shipped."""

from __future__ import annotations

import json

from matlab.core.loading import load_model
from matlab.resolve import resolve_checkpoint


def test_nano_resolves_and_matches_its_world():
    directory = resolve_checkpoint("nano")
    config = json.loads((directory / "config.json").read_text())
    assert config["num_hidden_layers"] == 20 and config["num_kv_shared_layers"] == 10
    assert (directory / "model.safetensors").stat().st_size < 15 * 2**20
    loaded = load_model("nano")
    assert loaded.tokenizer is not None and loaded.facts.kv_producers == {"sliding_attention": 8, "full_attention": 9}
    ids = loaded.tokenizer("note that baba lives in").input_ids
    assert loaded.tokenizer.unk_token_id not in ids
