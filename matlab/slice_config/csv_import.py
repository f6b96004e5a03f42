"""Import Google's slicing-configs CSV (`google/gemma3n-slicing-configs`) as slice config YAML.

Every malformed file or row ends in one CsvImportError line naming the file, the line and the
column, before anything is written: the file's size and each cell are bounded, cells are
parsed by the tiny arithmetic parser (`matlab.util.arith`), never evaluated.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

from matlab.errors import CsvImportError, OutputExistsError, SliceConfigError, shown_value
from matlab.io.staging import check_apart
from matlab.slice_config import Reference, SliceConfig, dump_slice_config, parse_slice_config
from matlab.util.arith import parse_int_expression, parse_int_list

COLUMNS = ("name", "# Layers", "# Effective Params (B)", "MMLU PT accuracy", "FFN Hidden Dims", "Layers Skipped")
SOURCE = "google/gemma3n-slicing-configs"
MAX_FILE_BYTES = 4 << 20  # the official CSV is 7 KB
MAX_STEM = 100            # file names stay far below the file system's limit of 255 bytes


def readable_name(raw: str) -> str:
    """'Config for E2.98B (layer-level)' -> 'E2.98B (layer-level)'; 'Config for official E2B Model' -> 'E2B'."""
    name = re.sub(r"^config for\s+", "", raw.strip(), flags=re.IGNORECASE)
    name = re.sub(r"^official\s+", "", name, flags=re.IGNORECASE)
    return re.sub(r"\s+model$", "", name, flags=re.IGNORECASE) or raw.strip()


def file_stem(name: str) -> str:
    """'E2.98B (layer-level)' -> 'e2.98b-layer-level'."""
    stem = re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")[:MAX_STEM].strip("-")
    return stem or "config"


def _cell(row: dict[str | None, object], column: str, where: str) -> str:
    """A row's cell; csv.DictReader gives None for the cells of a short row."""
    value = row.get(column)
    if not isinstance(value, str):
        raise CsvImportError(f"{where}: column {column!r} is missing; the row has fewer cells than the header "
                             f"({', '.join(COLUMNS)})")
    return value


def _number(text: str, column: str, where: str, percent: bool = False) -> float | None:
    """An optional finite number (with `percent`, '62.30%' is 0.623)."""
    text = text.strip()
    if not text:
        return None
    scale = 100 if percent and text.endswith("%") else 1
    try:
        value = float(text.removesuffix("%") if percent else text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        kind = "a number or percentage" if percent else "a number"
        raise CsvImportError(f"{where}: column {column!r}: {shown_value(text)} is not {kind}")
    return round(value / scale, 6) if percent else value


def _row_config(row: dict[str | None, object], where: str, base: str | None) -> SliceConfig:
    if row.get(None):  # csv.DictReader's place for cells past the header's
        raise CsvImportError(f"{where}: the row has {len(COLUMNS) + len(row[None]):,} cells but the header "
                             f"{len(COLUMNS)}; quote cells that contain commas")
    cells = {column: _cell(row, column, where) for column in COLUMNS}
    parsed = {}
    for column, parse in (("FFN Hidden Dims", parse_int_list), ("Layers Skipped", parse_int_list),
                          ("# Layers", parse_int_expression)):
        try:
            parsed[column] = parse(cells[column])
        except ValueError as error:
            raise CsvImportError(f"{where}: column {column!r}: {error}") from None
    widths, skipped, layer_count = parsed["FFN Hidden Dims"], parsed["Layers Skipped"], parsed["# Layers"]
    if len(widths) != layer_count:
        raise CsvImportError(f"{where}: 'FFN Hidden Dims' has {len(widths)} entries but '# Layers' says {layer_count}")
    stated_name = cells["name"].strip()
    reference = Reference(source=SOURCE, name=stated_name,
                          effective_params_b=_number(cells["# Effective Params (B)"], "# Effective Params (B)", where),
                          mmlu_pt_accuracy=_number(cells["MMLU PT accuracy"], "MMLU PT accuracy", where, percent=True))
    data = {"name": readable_name(stated_name), "description": f"Imported from {SOURCE}: {stated_name}.",
            "base": base, "layers_skipped": skipped, "ffn_widths": widths, "reference": reference.model_dump()}
    try:
        return parse_slice_config(data, where)
    except SliceConfigError as error:
        raise CsvImportError(str(error)) from None


def _read_text(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)  # a device or a huge file is not read to its end
    except OSError as error:
        raise CsvImportError(f"{path}: cannot read ({error.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise CsvImportError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB; the official slicing-configs CSV is "
                             "a few KB, pass that")
    try:
        return data.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not part of the header
    except UnicodeDecodeError as error:
        raise CsvImportError(f"{path}: not UTF-8 text (byte {error.start:,} is {data[error.start]:#04x}); export "
                             "the sheet as UTF-8 CSV") from None


def read_official_csv(path: str | Path, base: str | None = None) -> list[tuple[str, SliceConfig]]:
    """(file stem, config) for every row; raises on the first malformed row, naming it."""
    path = Path(path)
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    configs: list[tuple[str, SliceConfig]] = []
    seen: set[str] = set()
    suffixes: dict[str, int] = {}  # the last number given to each stem: repeated names stay linear
    try:
        missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise CsvImportError(f"{path}: missing column(s) {missing}; expected {list(COLUMNS)}")
        for row in reader:
            name = row.get("name")
            where = f"{path}, line {reader.line_num}" + \
                (f" ({shown_value(name.strip())})" if isinstance(name, str) else "")
            config = _row_config(row, where, base)
            stem = plain = file_stem(config.name)
            while stem in seen:
                suffixes[plain] = suffixes.get(plain, 1) + 1
                stem = f"{plain}-{suffixes[plain]}"
            seen.add(stem)
            configs.append((stem, config))
    except csv.Error as error:
        problem = (f"a cell is longer than {csv.field_size_limit():,} characters; the official CSV's cells are short"
                   if "field limit" in str(error) else f"not valid CSV ({error})")
        # line_num counts the lines read before the record that failed
        raise CsvImportError(f"{path}, line {reader.line_num + 1}: {problem}") from None
    return configs


def import_official_csv(path: str | Path, out: str | Path, base: str | None = None,
                        force: bool = False) -> list[Path]:
    """Write one YAML per CSV row into `out`; all rows are parsed before anything is written,
    and every file is written under a temporary name first, so a failed write (a full disk)
    replaces none of the files `--force` would overwrite."""
    out = Path(out)
    configs = read_official_csv(path, base)
    targets = [out / f"{stem}.yaml" for stem, _ in configs]
    for target in targets:  # a row's file must never be the CSV it came from
        check_apart(target, [path], option="--out")
    existing = [target.name for target in targets if target.exists()]
    if existing and not force:
        raise OutputExistsError(f"{out}: {', '.join(existing)} already exist; pass --force to overwrite")
    created = not out.exists()
    temporaries = [target.with_name(f".{target.name}.tmp") for target in targets]
    try:
        out.mkdir(parents=True, exist_ok=True)
        for temporary, (_, config) in zip(temporaries, configs):
            temporary.write_text(dump_slice_config(config), encoding="utf-8")
    except OSError as error:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise CsvImportError(f"{error.filename or out}: cannot write ({error.strerror})") from None
    for temporary, target in zip(temporaries, targets):
        temporary.replace(target)
    return targets
