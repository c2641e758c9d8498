"""Live changes over ``WS /v1/stream``: motion controls and a source switch between frames; each bad
request is one non-fatal error message and the session (and the server) go on to the end."""

from __future__ import annotations

import base64
import json

from serve_support import SOURCE, Server, clip_frames, closed_with, jpeg, open_stream, run_stream

from engine.serve.protocol import pack_in


def test_controls_and_source_switch_mid_stream(server: Server) -> None:
    with server.client() as c:
        r = c.post("/v1/sources", files={"source": ("face.png", SOURCE.read_bytes(), "image/png")})
    assert r.status_code == 201, r.text
    other = r.json()["id"]
    ws, ready = open_stream(server, options={"steps": 1})
    assert ready["type"] == "ready"
    frames = clip_frames(16)
    for i, f in enumerate(frames[:8]):
        ws.send(pack_in(jpeg(f), float(i)))
    requests = [
        {"type": "controls", "controls": {"smooth": 0.5, "lock_pose": True, "expression_scale": 0.5}},
        {"type": "controls", "controls": {"pose_scale": -1}},  # bad: negative
        {"type": "controls", "controls": {"expression_scale": 1e9}},  # bad: huge
        {"type": "controls", "controls": {"colour": 1}},  # bad: unknown
        {"type": "source", "source": {"data": base64.b64encode(b"not an image").decode()}},  # bad: unreadable
        {"type": "source", "source": {"id": "00000000-0000-0000-0000-000000000000"}},  # bad: unknown id
        {"type": "source", "source": {"id": other}},
    ]
    for req in requests:
        ws.send(json.dumps(req))
    raw = run_stream(ws, frames[8:])  # the rest of the frames, end, read everything to the close
    assert raw.close_code == 1000 and raw.done is not None
    assert [r[0] for r in raw.results] == list(range(16))  # nothing lost, in order
    assert raw.done["stats"]["sent"] == 16


def test_live_replies(server: Server) -> None:
    """The replies, in order: the controls now in force, an error per bad request (not fatal), the switch."""
    ws, _ = open_stream(server, options={"steps": 1})
    ws.send(pack_in(jpeg(clip_frames(1)[0]), 0.0))
    ws.send(json.dumps({"type": "controls", "controls": {"smooth": 0.25, "eyes": "source"}}))
    ws.send(json.dumps({"type": "controls", "controls": {"pose_scale": float("nan")}}))
    ws.send(json.dumps({"type": "source", "source": {"data": base64.b64encode(b"not an image").decode()}}))
    ws.send(json.dumps({"type": "source", "source": {"data": base64.b64encode(SOURCE.read_bytes()).decode()}}))
    texts = []
    while len(texts) < 4:
        msg = ws.recv(timeout=60)
        if isinstance(msg, str):
            texts.append(json.loads(msg))
    ok, nan, unreadable, switched = texts
    assert ok["type"] == "controls" and ok["controls"]["smooth"] == 0.25 and ok["controls"]["eyes"] == "source"
    assert nan["type"] == "error" and nan["fatal"] is False and nan["code"] == 4422 and "pose_scale" in nan["message"]
    assert unreadable["type"] == "error" and unreadable["fatal"] is False and unreadable["field"].startswith("source")
    assert switched["type"] == "source"
    run = run_stream(ws, clip_frames(3))
    assert run.close_code == 1000 and [r[0] for r in run.results] == [0, 1, 2, 3]


def test_a_stream_starts_with_the_controls_given(server: Server) -> None:
    """Motion controls as stream start options (declared once, engine.config.controls): in force from the
    first frame, as the ready message says."""
    ws, ready = open_stream(server, options={"steps": 1, "lock_pose": True, "smooth": 0.25, "eyes": "source"})
    assert ready["type"] == "ready"
    assert {k: ready["controls"][k] for k in ("lock_pose", "smooth", "eyes", "lips")} == {
        "lock_pose": True, "smooth": 0.25, "eyes": "source", "lips": "driving"}
    run = run_stream(ws, clip_frames(2))
    assert run.close_code == 1000 and [r[0] for r in run.results] == [0, 1]


def test_a_bad_control_as_a_start_option_closes_4422_naming_it(server: Server) -> None:
    ws, reply = open_stream(server, options={"steps": 1, "expression_scale": -2})
    code, reason, texts = closed_with(ws)
    assert code == 4422 and "expression_scale" in reason, (code, reason, reply, texts)

