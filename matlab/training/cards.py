"""What a trained output says about itself: a fine-tuned adapter's card and record, and the
section a healed slice's card and provenance gain."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from matlab import __version__
from matlab.io.staging import PROVENANCE_NAME
from matlab.slicing.card import _card_text, _fenced

FINETUNE_RECORD = "finetune.json"


def mean_losses(curve: list[dict], share: float = 0.1) -> dict[str, float]:
    """Mean loss per slice over the last `share` of the steps (a slice not trained there: its last step)."""
    tail = curve[-max(1, int(len(curve) * share)):]
    means = {}
    for name in dict.fromkeys(entry["slice"] for entry in curve):
        losses = [entry["loss"] for entry in tail if entry["slice"] == name] or \
            [entry["loss"] for entry in curve if entry["slice"] == name][-1:]
        means[name] = round(statistics.fmean(losses), 4)
    return means


def write_finetune_card(directory: Path, settings, result, identity: dict[str, Any], command: str | None) -> None:
    """README.md (the adapter's card) and finetune.json (identity, curve) in `directory`."""
    counts = {name: sum(1 for entry in result.curve if entry["slice"] == name) for name in
              dict.fromkeys(entry["slice"] for entry in result.curve)}
    final = mean_losses(result.curve)
    kind = "nested: each step trained one of the slices below, through the elastic core" if settings.nested else \
        "full model only (not nested)"
    lines = [f"# LoRA adapter for {_card_text(Path(settings.checkpoint).name)}", "",
             f"Fine-tuned by MatFormer Lab {__version__} on {_card_text(settings.checkpoint)}; {kind}.", "",
             f"- LoRA rank {settings.rank}, alpha {settings.alpha or 2 * settings.rank}, on every attention "
             "projection and FFN matrix of the decoder layers",
             f"- data: {_card_text(settings.data)} (sha256 {result.data_sha256[:16]}...), {result.windows} windows of "
             f"{settings.sequence_length} tokens",
             f"- {settings.steps} steps of {settings.batch_size} windows, learning rate {settings.learning_rate} "
             f"(warm-up {settings.warmup_steps}, cosine to a tenth), seed {settings.seed}", "",
             "| slice | from | steps trained | mean loss, last 10% of steps |", "|---|---|---:|---:|"]
    for entry in result.slices:
        lines.append(f"| {_card_text(entry['name'])} | {_card_text(entry['source'])} | {counts.get(entry['name'], 0)} "
                     f"| {final.get(entry['name'], float('nan')):.4f} |")
    lines += ["", "Cut it with any slice of the checkpoint (PEFT loads the result on the sliced model):", "",
              *_fenced(f"matformer slice {settings.checkpoint} --config SLICE.yaml --out SLICED --adapter "
                       f"{settings.out}")]
    if command:
        lines += ["", "Reproduce with:", "", *_fenced(command)]
    (directory / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    record = {"tool": "matformer-lab", "tool_version": __version__, "identity": identity, "command": command,
              "final_loss": final, "steps_per_slice": counts, "curve": result.curve}
    (directory / FINETUNE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def add_heal_record(directory: Path, heal: dict[str, Any]) -> None:
    """Add the healing to a sliced checkpoint's provenance and card (`matlab.slicing.card` wrote both)."""
    provenance_path = directory / PROVENANCE_NAME
    provenance = json.loads(provenance_path.read_text(encoding="utf-8"))
    provenance["heal"] = heal
    provenance_path.write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    before, after = heal["heldout"]["before"], heal["heldout"]["after"]
    method = "a LoRA adapter trained on the slice, merged into these weights" if heal["method"] == "lora" else \
        "the slice's own weights trained"
    lines = ["", "## Healed", "",
             f"Distilled from the full model for {heal['steps']} steps ({method}), on the full model's "
             f"next-token distributions (top {heal['top_k']} plus the rest) over {_card_text(heal['calibration'])} "
             f"(sha256 {heal['calibration_sha256'][:16]}...).", "",
             "| held-out calibration text | before | after |", "|---|---:|---:|",
             f"| KL to the full model, per token | {before['kl']:.4f} | {after['kl']:.4f} |",
             f"| perplexity | {before['perplexity']:.3f} | {after['perplexity']:.3f} |",
             "", f"Held out: {_card_text(heal['heldout']['source'])}, {heal['heldout']['tokens']} tokens."]
    with open(directory / "README.md", "a", encoding="utf-8") as card:
        card.write("\n".join(lines) + "\n")
