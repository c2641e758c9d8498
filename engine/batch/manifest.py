"""A batch manifest: one item per (source, driving) pair, as CSV or JSON Lines.

Columns (CSV header / JSON keys): ``source`` and ``driving`` (paths, relative to the manifest's folder),
optional ``out`` (the output's name inside the output folder; ``.mp4`` is added), optional
``max_frames``, the face crop as ``engine.reenact``'s flags (``align``: none | auto | insightface |
opencv, ``face_index``: which face, 0 = the largest, ``paste_back``: the result pasted back into the
whole photo; one face per row: several faces of a photo are several rows), and any field of
``engine.api.RunOptions`` (``mode``, ``steps``, ``seed``, ...). The
per-item options are derived from that dataclass, never listed here: a knob added to ``RunOptions`` is a
manifest column at once. An empty CSV cell (or a JSON null) means the option's default.

A manifest that cannot be read as a whole (no such file, no header, an unknown column, a duplicate
output name) is one ``InputError``; an item whose values or files are wrong is reported on that item
alone (``Item.error``) so that the other items still run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.api import RunOptions
from engine.errors import EngineError, InputError
from engine.face.align import METHODS as ALIGN_METHODS

FIXED_COLUMNS = ("source", "driving", "out", "max_frames")
FACE_TYPES: dict[str, type] = {"align": str, "face_index": int, "paste_back": bool}  # set_source / render
FACE_DEFAULTS: dict[str, Any] = {"align": "none", "face_index": None, "paste_back": False}


# RunOptions keyword -> its scalar type (int, float, str, bool): the per-item options (the mode, every
# run knob and motion control, as declared in engine.config.modes.RunConfig and engine.config.controls)
OPTION_TYPES: dict[str, type] = RunOptions.types()
COLUMNS = (*FIXED_COLUMNS, *FACE_TYPES, *OPTION_TYPES)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass
class Item:
    """One render of the batch: where it comes from, what it is called, how it is run."""

    index: int  # 0-based row of the manifest
    name: str  # output stem inside the output folder
    source: Path
    driving: Path
    options: dict[str, Any] = field(default_factory=dict)  # RunOptions keyword arguments given by the row
    face: dict[str, Any] = field(default_factory=dict)  # align / face_index / paste_back, where not the default
    max_frames: int | None = None
    error: str | None = None  # why this item cannot run (bad value, missing file), found before any render

    def run_options(self) -> RunOptions:
        return RunOptions(**self.options)

    def spec(self) -> dict[str, Any]:
        """What the item asks for, in the results manifest and the item's record."""
        return {"source": str(self.source), "driving": str(self.driving), "max_frames": self.max_frames,
                "options": dict(self.options), **({"face": dict(self.face)} if self.face else {})}


def _value(column: str, raw: Any) -> Any:
    """A cell (a CSV string or a JSON value) -> the option's type; None for empty."""
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return None
    kind = int if column == "max_frames" else FACE_TYPES.get(column) or OPTION_TYPES[column]
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in TRUE or text in FALSE:
            return text in TRUE
        raise ValueError(f"{column} must be true or false, got {raw!r}")
    if kind is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(f"{column} must be an integer, got {raw!r}")
        try:
            return int(str(raw).strip()) if not isinstance(raw, int | float) else int(raw)
        except ValueError:
            raise ValueError(f"{column} must be an integer, got {raw!r}") from None
    if kind is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{column} must be a number, got {raw!r}") from None
    return str(raw).strip()


def _rows(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise InputError(f"manifest {path} cannot be read ({err.strerror or err}): check the path") from None
    except UnicodeDecodeError:
        raise InputError(f"manifest {path} is not UTF-8 text: write it as CSV or JSON Lines") from None
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"manifest {path} line {number} is not JSON ({err.msg}): "
                                 "one object per line") from None
            if not isinstance(row, dict):
                raise InputError(f"manifest {path} line {number} is not a JSON object: one object per line")
            rows.append(row)
        return rows
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        raise InputError(f"manifest {path} is empty: it needs a header row with source,driving[,out,...]")
    rows = list(reader)
    if any(None in row for row in rows):
        raise InputError(f"manifest {path} has a row with more cells than the header: quote cells with commas")
    return rows


def read_manifest(path: Path) -> list[Item]:
    """Every item of the manifest, in order; items with a problem carry it in ``error``."""
    rows = _rows(path)
    if not rows:
        raise InputError(f"manifest {path} has no items")
    columns = {c for row in rows for c in row}
    normalised = {c: c.strip().replace("-", "_") for c in columns}
    unknown = sorted(c for c, n in normalised.items() if n not in COLUMNS)
    if unknown:
        raise InputError(f"manifest {path}: unknown column(s) {unknown}; columns are {', '.join(COLUMNS)}")
    for need in ("source", "driving"):
        if need not in normalised.values():
            raise InputError(f"manifest {path} has no '{need}' column; columns are {', '.join(COLUMNS)}")
    base = path.resolve().parent
    items: list[Item] = []
    for index, raw in enumerate(rows):
        row = {normalised[k]: v for k, v in raw.items()}
        items.append(_item(index, row, base))
    seen: dict[str, int] = {}
    for item in items:
        if item.name in seen:
            raise InputError(f"manifest {path}: items {seen[item.name]} and {item.index} both write "
                             f"'{item.name}.mp4'; give them distinct 'out' names")
        seen[item.name] = item.index
    return items


def _item(index: int, row: dict[str, Any], base: Path) -> Item:
    source = base / str(row.get("source") or "").strip()
    driving = base / str(row.get("driving") or "").strip()
    out = str(row.get("out") or "").strip()
    name = out[:-4] if out.lower().endswith(".mp4") else out
    if not name:
        name = f"{index:05d}_{Path(source).stem}_{Path(driving).stem}"
    item = Item(index, name, source, driving)
    if not NAME_RE.match(name):
        item.name = f"{index:05d}_invalid"
        item.error = f"out {out!r} is not a plain file name (letters, digits, '.', '_', '-'; no folders)"
        return item
    try:
        for column in ("source", "driving"):
            if not str(row.get(column) or "").strip():
                raise ValueError(f"the '{column}' cell is empty")
        item.max_frames = _value("max_frames", row.get("max_frames"))
        item.options = {k: v for k in OPTION_TYPES if (v := _value(k, row.get(k))) is not None}
        item.run_options().check()
        item.face = _face(row)
        if item.max_frames is not None and item.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {item.max_frames}")
        for what, p in (("source", item.source), ("driving", item.driving)):
            if not p.is_file():
                raise ValueError(f"{what} {p} does not exist or is not a file")
    except (ValueError, TypeError, EngineError) as err:
        item.error = str(err)
    return item


def _face(row: dict[str, Any]) -> dict[str, Any]:
    """The row's face crop, checked as engine.reenact checks its flags; defaults left out (so that an item
    without these columns keeps the key it had before they existed)."""
    face = {k: v for k in FACE_TYPES if (v := _value(k, row.get(k))) is not None and v != FACE_DEFAULTS[k]}
    align = face.get("align", "none")
    if align not in ("none", *ALIGN_METHODS):
        raise ValueError(f"align must be one of none, {', '.join(ALIGN_METHODS)}, got {align!r}")
    if align == "none" and (face.get("paste_back") or "face_index" in face):
        raise ValueError("paste_back and face_index need align auto|insightface|opencv (a face crop)")
    if face.get("face_index", 0) < 0:
        raise ValueError(f"face_index must be >= 0 (0 = the largest face), got {face['face_index']}")
    return face


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def item_key(item: Item, engine: dict[str, Any], source_sha: str, driving_sha: str) -> str:
    """What decides an item's output: the engine, the item's options and the inputs' bytes. An output
    recorded under the same key is reused; any change (a new seed, an edited clip) renders again."""
    options = item.run_options().to_json()
    what = {"engine": engine, "options": options, "max_frames": item.max_frames, "source": source_sha,
            "driving": driving_sha, **({"face": item.face} if item.face else {})}
    blob = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]
