"""The embedded nano checkpoint resolves by name and runs, as shipped."""

from __future__ import annotations

import json

from matlab.core.loading import load_model
from matlab.io.resolve import resolve_checkpoint


def test_nano_resolves_and_matches_its_world():
    directory = resolve_checkpoint("nano")
    config = json.loads((directory / "config.json").read_text())
    assert config["num_hidden_layers"] == 20 and config["num_kv_shared_layers"] == 10
    assert (directory / "model.safetensors").stat().st_size < 15 * 2**20
    loaded = load_model("nano")
    assert loaded.tokenizer is not None and loaded.facts.kv_producers == {"sliding_attention": 8, "full_attention": 9}
    ids = loaded.tokenizer("note that baba lives in").input_ids
    assert loaded.tokenizer.unk_token_id not in ids


def test_control_slices_collapse_where_the_matformer_slices_hold():
    """The control (trained at full size only) loses far more when sliced to nano-E2B than the
    MatFormer-trained nano does, measured on held-out text."""
    from matlab.core.scoring import perplexity
    from matlab.core.submodel import select_submodel
    from matlab.demo import demo_inputs
    from matlab.nano.world import heldout_text, make_world
    from matlab.slice_config import load_slice_config

    configs, _ = demo_inputs()
    e2b = load_slice_config(next(path for path in configs if path.name == "nano-e2b.yaml"))
    text = " ".join(row["text"] for row in heldout_text(make_world())[:10])
    ratios = {}
    for name in ("nano", "nano-control"):
        loaded = load_model(name)
        ids = loaded.tokenizer(text).input_ids
        full = perplexity(loaded.model, ids, window=256)
        sliced = perplexity(select_submodel(loaded, e2b).model, ids, window=256)
        ratios[name] = sliced / full
    assert ratios["nano"] < 1.05
    assert ratios["nano-control"] > 1.5
