"""The server's parts without a server: wire format, drop policy, option parsing, the restart rule
in the store, file-name handling, the token compare."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.serve.auth import token_ok
from engine.serve.config import ServeConfig
from engine.serve.errors import ApiError
from engine.serve.inbox import Inbox, Item
from engine.serve.options import JOB_FIELDS, JobOptions, parse
from engine.serve.protocol import close_reason, image_kind, pack_in, pack_out, unpack_in, unpack_out
from engine.serve.store import JobStore, parse_id
from engine.serve.uploads import display_name


def test_wire_format_round_trips() -> None:
    jpg = b"\xff\xd8\xff\xe0rest"
    assert unpack_in(pack_in(jpg, 12.5)) == (12.5, jpg)
    assert unpack_in(pack_in(jpg, None)) == (None, jpg)
    assert unpack_in(jpg) == (None, jpg)  # a bare image
    index, stamp, latency, data = unpack_out(pack_out(7, 99.0, 12.25, b"img"))
    assert (index, stamp, latency, data) == (7, 99.0, 12.25, b"img")
    assert unpack_out(pack_out(1, None, 0.0, b""))[1] is None
    assert image_kind(jpg) == "jpeg" and image_kind(b"RIFF\0\0\0\0WEBPVP8 ") == "webp"
    assert image_kind(b"\x89PNG\r\n") is None
    assert len(close_reason("é" * 200).encode()) <= 123


def _item(i: int) -> Item:
    return Item(i, None, b"", time.monotonic())


def test_drop_oldest_keeps_the_newest_frames() -> None:
    box = Inbox(3, "drop_oldest")
    results = [box.offer(_item(i)) for i in range(5)]
    assert results == [(True, 0)] * 3 + [(True, 1)] * 2 and box.dropped == 2
    box.close()
    assert [box.get().seq for _ in range(3)] == [2, 3, 4] and box.get() is None


def test_block_policy_refuses_instead_of_dropping() -> None:
    box = Inbox(2, "block")
    assert [box.offer(_item(i))[0] for i in range(3)] == [True, True, False] and box.dropped == 0
    assert box.get().seq == 0 and box.offer(_item(2)) == (True, 0)
    box.abort()
    assert box.get() is None


def test_options_name_the_bad_field() -> None:
    cfg = ServeConfig(max_steps=10, default_steps=2)
    ok = parse({"steps": "3", "seed": "7", "side_by_side": "on", "max_frames": "5"}, cfg, 64, JOB_FIELDS)
    assert ok.run.steps == 3 and ok.run.seed == 7 and ok.side_by_side and ok.max_frames == 5
    assert parse({}, cfg, 64, JOB_FIELDS).run.steps == 2  # the server's default
    assert JobOptions.from_json(ok.to_json()) == ok
    for raw, field in [({"steps": "11"}, "steps"), ({"steps": "1.5"}, "steps"), ({"guidance": "inf"}, "guidance"),
                       ({"seed": str(2**64)}, "seed"), ({"sampler": "x"}, "sampler"), ({"size": "128"}, "size"),
                       ({"max_frames": "0"}, "max_frames"), ({"nope": "1"}, "nope")]:
        with pytest.raises(ApiError) as err:
            parse(raw, cfg, 64, JOB_FIELDS)
        assert err.value.status == 422 and err.value.field == field, raw


def test_restart_rule_requeues_then_fails(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3", tmp_path / "jobs")
    for job_id in ("a", "b", "c"):
        assert store.add(job_id, {"run": {}}, max_queue=10) is not None
        (store.folder(job_id)).mkdir()
        (store.folder(job_id) / "source").write_bytes(b"s")
        (store.folder(job_id) / ".result.abc.mp4").write_bytes(b"half")  # a killed run's temporary file
    assert store.start("a") and store.start("b")
    store.mark_deleting("c")
    assert store.recover(max_attempts=2) == {"requeued": ["a", "b"], "failed": [], "removed": ["c"]}
    assert [p.name for p in store.folder("a").iterdir()] == ["source"]  # no half-written file left
    assert store.get("a").state == "queued" and "stopped" in store.get("a").note
    assert store.get("c") is None and not store.folder("c").exists()
    assert store.start("a")  # its second run, also interrupted
    out = store.recover(max_attempts=2)
    assert out["failed"] == ["a"] and store.get("a").state == "failed" and "2 times" in store.get("a").error
    assert store.counts()["queued"] == 1


def test_queue_limit_is_atomic(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3", tmp_path / "jobs")
    assert [store.add(str(i), {}, max_queue=2) for i in range(3)] == [1, 2, None]


def test_ids_are_uuids_and_names_only_labels() -> None:
    assert parse_id("../../etc/passwd") is None and parse_id("") is None
    assert parse_id("6F9619FF-8B86-D011-B42D-00C04FC964FF") == "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    assert display_name(b"../../x/evil name.png", "source") == "evil name.png"
    assert display_name(b"a\x00b;rm -rf.mp4", "driving") == "a_b_rm -rf.mp4"
    assert display_name(None, "driving") == "driving"


def test_token_compare() -> None:
    assert token_ok(None, None) and token_ok("k", "k")
    assert not token_ok("k", None) and not token_ok("k", "K") and not token_ok("k", "k ")
