"""Import Google's slicing-configs CSV (`google/gemma3n-slicing-configs`) as slice config YAML."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from matlab.arith import parse_int_expression, parse_int_list
from matlab.errors import CsvImportError, OutputExistsError, SliceConfigError
from matlab.slice_config import Reference, SliceConfig, dump_slice_config, parse_slice_config

COLUMNS = ("name", "# Layers", "# Effective Params (B)", "MMLU PT accuracy", "FFN Hidden Dims", "Layers Skipped")
SOURCE = "google/gemma3n-slicing-configs"


def readable_name(raw: str) -> str:
    """'Config for E2.98B (layer-level)' -> 'E2.98B (layer-level)'; 'Config for official E2B Model' -> 'E2B'."""
    name = re.sub(r"^config for\s+", "", raw.strip(), flags=re.IGNORECASE)
    name = re.sub(r"^official\s+", "", name, flags=re.IGNORECASE)
    return re.sub(r"\s+model$", "", name, flags=re.IGNORECASE) or raw.strip()


def file_stem(name: str) -> str:
    """'E2.98B (layer-level)' -> 'e2.98b-layer-level'."""
    stem = re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")
    return stem or "config"


def _percent(text: str, where: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return round(float(text.rstrip("%")) / 100 if text.endswith("%") else float(text), 6)
    except ValueError:
        raise CsvImportError(f"{where}: 'MMLU PT accuracy' value {text!r} is not a number or percentage") from None


def _row_config(row: dict[str, str], where: str, base: str | None) -> SliceConfig:
    try:
        widths = parse_int_list(row["FFN Hidden Dims"])
    except ValueError as error:
        raise CsvImportError(f"{where}: column 'FFN Hidden Dims': {error}") from None
    try:
        skipped = parse_int_list(row["Layers Skipped"] or "")
        layer_count = parse_int_expression(row["# Layers"])
    except ValueError as error:
        raise CsvImportError(f"{where}: {error}") from None
    if len(widths) != layer_count:
        raise CsvImportError(f"{where}: 'FFN Hidden Dims' has {len(widths)} entries but '# Layers' says {layer_count}")
    stated = row["# Effective Params (B)"].strip()
    name = readable_name(row["name"])
    reference = Reference(source=SOURCE, name=row["name"].strip(),
                          effective_params_b=float(stated) if stated else None,
                          mmlu_pt_accuracy=_percent(row["MMLU PT accuracy"], where))
    data = {"name": name, "description": f"Imported from {SOURCE}: {row['name'].strip()}.", "base": base,
            "layers_skipped": skipped, "ffn_widths": widths, "reference": reference.model_dump()}
    try:
        return parse_slice_config(data, where)
    except SliceConfigError as error:
        raise CsvImportError(str(error)) from None


def read_official_csv(path: str | Path, base: str | None = None) -> list[tuple[str, SliceConfig]]:
    """(file stem, config) for every row; raises on the first malformed row, naming it."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise CsvImportError(f"{path}: missing column(s) {missing}; expected {list(COLUMNS)}")
            rows = list(reader)
    except OSError as error:
        raise CsvImportError(f"{path}: cannot read ({error.strerror})") from None
    configs: list[tuple[str, SliceConfig]] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        config = _row_config(row, f"{path}, line {number} ({row['name'].strip()!r})", base)
        stem = file_stem(config.name)
        while stem in seen:
            stem += "-2"
        seen.add(stem)
        configs.append((stem, config))
    return configs


def import_official_csv(path: str | Path, out: str | Path, base: str | None = None,
                        force: bool = False) -> list[Path]:
    """Write one YAML per CSV row into `out`; all rows are parsed before anything is written."""
    out = Path(out)
    configs = read_official_csv(path, base)
    targets = [out / f"{stem}.yaml" for stem, _ in configs]
    existing = [target.name for target in targets if target.exists()]
    if existing and not force:
        raise OutputExistsError(f"{out}: {', '.join(existing)} already exist; pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for target, (_, config) in zip(targets, configs):
        target.write_text(dump_slice_config(config), encoding="utf-8")
    return targets
