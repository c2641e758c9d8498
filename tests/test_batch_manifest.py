"""The batch manifest's face-crop columns (``align``, ``face_index``, ``paste_back``): checked per item as
``engine.reenact`` checks its flags, part of the item's key only where they change the render. No Ray
needed (the cluster tests are in test_ray.py)."""

from __future__ import annotations

import json
from pathlib import Path

from engine.batch.manifest import item_key, read_manifest

ASSETS = Path(__file__).resolve().parents[1] / "engine" / "assets"


def test_face_columns_are_checked_per_item_and_keyed_only_when_they_matter(tmp_path: Path) -> None:
    base = {"source": str(ASSETS / "source.png"), "driving": str(ASSETS / "driving.mp4")}
    rows = {
        "plain": {},
        "defaults": {"align": "none", "paste_back": False},  # spelled out: the same render as "plain"
        "pasted": {"align": "opencv", "paste_back": "yes", "face_index": 0},
        "bad_align": {"align": "dlib"},
        "paste_without_crop": {"paste_back": True},
        "negative_index": {"align": "auto", "face_index": -1},
        "several": {"align": "auto", "face_index": "all"},
    }
    manifest = tmp_path / "items.jsonl"
    manifest.write_text("".join(json.dumps({**base, "out": name, **extra}) + "\n" for name, extra in rows.items()))
    items = {item.name: item for item in read_manifest(manifest)}

    assert items["plain"].face == items["defaults"].face == {} and items["plain"].error is None
    assert items["pasted"].face == {"align": "opencv", "paste_back": True, "face_index": 0}
    assert items["pasted"].spec()["face"] == items["pasted"].face and "face" not in items["plain"].spec()
    assert "align must be one of none, auto, insightface, opencv" in (items["bad_align"].error or "")
    assert "need align" in (items["paste_without_crop"].error or "")
    assert "face_index must be >= 0" in (items["negative_index"].error or "")
    assert "face_index must be an integer" in (items["several"].error or "")  # one face per row

    def key(name: str) -> str:
        return item_key(items[name], {"preset": "tiny"}, "s" * 64, "d" * 64)

    assert key("plain") == key("defaults")  # a manifest written before these columns keeps its records
    assert key("pasted") != key("plain")
