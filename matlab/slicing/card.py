"""Model card (README.md) and machine-readable provenance written beside a sliced checkpoint."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from pathlib import Path

from matlab import __version__
from matlab.io.rundir import checkpoint_identity
from matlab.io.staging import PROVENANCE_NAME
from matlab.plan import SlicePlan
from matlab.plan.accounting import ParamReport
from matlab.runtimes import expected_in, runs_in, runtimes_line


def _param_rows(params: ParamReport) -> list[tuple[str, int]]:
    return [("effective (text, excluding embeddings and PLE)", params.effective_params),
            ("per-layer embeddings (PLE)", params.ple_params), ("token embeddings", params.embedding_params),
            ("text total", params.text_params), ("audio tower", params.audio_params),
            ("vision tower", params.vision_params), ("multimodal embedders", params.multimodal_embedder_params),
            ("total", params.total_params)]


_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _card_text(text: object, one_line: bool = True) -> str:
    """User text (a config's name or description, a path) as literal Markdown: HTML escaped, so
    `<!--` or a tag cannot hide or restyle the rest of the card; controls dropped; a name on one line."""
    text = str(text).replace("\r\n", "\n")
    text = re.sub(r"\s*\n\s*", " ", text) if one_line else text
    return html.escape(_CONTROLS.sub("", text), quote=False)


def _fenced(code: str) -> list[str]:
    """A code block that no run of backticks in `code` can close early."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", code)), default=0))
    return [fence, code, fence]


def render_card(plan: SlicePlan, params: ParamReport, source: Path, text_only: bool, command: str | None) -> str:
    config = plan.config
    lines = [f"# {_card_text(config.name)}: a MatFormer slice of {_card_text(source.name)}", ""]
    if config.description:
        lines += [_card_text(config.description, one_line=False), ""]
    family = plan.facts.family
    kind = f"text-only (`{family.text_model_class_name}`)" if text_only or not plan.facts.is_multimodal else \
        f"multimodal (`{family.multimodal_model_class_name}`), audio and vision towers unchanged"
    lines += [f"Made by MatFormer Lab {__version__} from {_card_text(source)}; {kind}.", "",
              f"- layers kept: {len(plan.kept_layers)} of {plan.facts.num_layers}",
              f"- layers skipped: {list(config.layers_skipped) or 'none'}",
              f"- KV-shared layers: {plan.num_kv_shared_layers}",
              f"- FFN widths (per kept layer): {list(plan.ffn_widths)}",
              *([f"- GGUF weight formats (recorded for a GGUF export; the weights here are unchanged): "
                 f"{_card_text(json.dumps(config.weight_formats.yaml_data()))}"] if config.weight_formats else []),
              f"- runs in: {runtimes_line(plan)} (each in the layout `matformer slice --runtime NAME` writes; "
              "`matformer validate --runtime NAME` explains a missing one, `matformer conform` measures one)", "",
              "| parameters | count |", "|---|---:|"]
    lines += [f"| {label} | {count:,} |" for label, count in _param_rows(params)]
    lines += [f"| bytes on disk ({params.dtype}) | {params.total_bytes:,} |"]
    if params.format_bytes is not None:  # the config's weight_formats; the checkpoint itself is unchanged
        lines += [f"| GGUF text tensor bytes ({params.formats}) | {params.format_bytes:,} |"]
    if config.reference and config.reference.effective_params_b is not None:
        lines += ["", f"The config's source states {config.reference.effective_params_b}B effective parameters "
                      f"(exact: {params.effective_params / 1e9:.3f}B)."]
    if command:
        lines += ["", "Reproduce with:", "", *_fenced(command)]
    return "\n".join(lines) + "\n"


def write_card_and_provenance(directory: Path, plan: SlicePlan, params: ParamReport, *, source: Path,
                              config_source: str, text_only: bool, command: str | None) -> None:
    (directory / "README.md").write_text(render_card(plan, params, source, text_only, command), encoding="utf-8")
    provenance = {
        "tool": "matformer-lab", "tool_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source_checkpoint": checkpoint_identity(source),
        "slice_config": plan.config.model_dump(mode="json"), "slice_config_file": config_source,
        "submodel_id": plan.submodel_id,
        "kept_layers": list(plan.kept_layers), "ffn_widths": list(plan.ffn_widths), "text_only": text_only,
        "runs_in": runs_in(plan), "expected_in": expected_in(plan),
        "params": params.as_dict(), "command": command,
    }
    (directory / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
