"""The slicer's memory is bounded by its chunk size, not by tensor or checkpoint size."""

from __future__ import annotations

import json
import subprocess
import sys

from matlab.arch.facts import facts_from_config
from matlab.slicing.synth import synthesize_checkpoint

from helpers import tiny_text_config

MEASURE = """
import json, resource, sys
from pathlib import Path
from matlab.slice_config import SliceConfig
from matlab.slicing.slicer import slice_checkpoint
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
slice_checkpoint(Path(sys.argv[1]), SliceConfig(name="e2b-like", layers_skipped=[10, 11], ffn_widths=128),
                 Path(sys.argv[2]), chunk_bytes=2**20)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kib": after - before, "torch": "torch" in sys.modules}))
"""


def test_peak_memory_stays_near_chunk_size(tmp_path):
    # A text checkpoint whose PLE table alone is 126 MB (262,144 x 15 x 8 float32).
    config = tiny_text_config().to_dict()
    config.update(vocab_size_per_layer_input=262_144, architectures=["Gemma3nForCausalLM"])
    source = synthesize_checkpoint(facts_from_config(config, "big-ple"), tmp_path / "big")
    ple_bytes = 262_144 * 15 * 8 * 4
    result = subprocess.run([sys.executable, "-c", MEASURE, str(source), str(tmp_path / "out")],
                            capture_output=True, text=True, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert not measured["torch"], "slicing should not import torch"
    assert measured["growth_kib"] * 1024 < ple_bytes / 8, measured  # chunks of 1 MiB, not the 126 MB tensor
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] > ple_bytes * 0.8
