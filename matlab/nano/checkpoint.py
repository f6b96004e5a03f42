"""Writing a trained nano model as a Hugging Face checkpoint with its model card."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from matlab.io.staging import staged_output
from matlab.nano.train import GRANULARITIES, TrainResult, TrainSettings

CURVE_NAME = "training_curve.json"


def curve_summary(curve: list[dict], buckets: int = 10) -> list[dict]:
    """Mean loss per granularity in `buckets` equal spans of training."""
    if not curve:
        return []
    span = max(1, len(curve) // buckets)
    rows = []
    for start in range(0, len(curve), span):
        part = curve[start:start + span]
        row: dict = {"steps": f"{part[0]['step']}-{part[-1]['step']}"}
        for granularity in GRANULARITIES:
            losses = [entry["loss"] for entry in part if entry["granularity"] == granularity]
            row[granularity] = round(statistics.fmean(losses), 3) if losses else None
        rows.append(row)
    return rows


def _card(result: TrainResult, settings: TrainSettings, command: str) -> str:
    kind = "MatFormer (nested granularities trained jointly)" if settings.matformer else \
        "control: trained at full size only, no nesting"
    params = sum(p.numel() for p in result.model.parameters())
    lines = [f"# nano Gemma 3n ({'MatFormer' if settings.matformer else 'control'})", "",
             f"A {params:,}-parameter Gemma 3n text model ({kind}) trained by MatFormer Lab on a synthetic",
             f"world of {len(result.world.people)} people and {len(result.world.people) * 4} facts.", "",
             f"- command: `{command}`", f"- seed: {settings.seed}", f"- steps: {settings.steps} "
             f"(batch {settings.batch_size} x {settings.sequence_length} tokens), {result.seconds / 60:.1f} minutes",
             f"- learning rate {settings.learning_rate}, warm-up {settings.warmup_steps}, cosine to 10%", "",
             "Training curve (mean loss per granularity):", "",
             "| steps | " + " | ".join(GRANULARITIES) + " |", "|---|" + "---:|" * len(GRANULARITIES)]
    for row in curve_summary(result.curve):
        lines.append(f"| {row['steps']} | " + " | ".join("" if row[g] is None else f"{row[g]:.3f}"
                                                       for g in GRANULARITIES) + " |")
    return "\n".join(lines) + "\n"


def save_nano(result: TrainResult, settings: TrainSettings, out: Path, command: str, force: bool = False) -> Path:
    """Write weights (bfloat16 safetensors), tokenizer, card and curve, atomically."""
    with staged_output(out, force) as temporary:
        model = result.model.to(torch.bfloat16)
        model.config.dtype = "bfloat16"
        model.save_pretrained(temporary)
        result.model.to(torch.float32)
        result.tokenizer.save_pretrained(temporary)
        (temporary / "README.md").write_text(_card(result, settings, command), encoding="utf-8")
        payload = {"settings": vars(settings), "seconds": round(result.seconds, 1), "curve": result.curve}
        (temporary / CURVE_NAME).write_text(json.dumps(payload) + "\n", encoding="utf-8")
    return out
