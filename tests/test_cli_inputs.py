"""Bad inputs of ``engine.cli.fixtures``, ``engine.cli.build`` and ``engine.cli.verify``, and unreadable weights:
exit status 2, one ``error:`` line naming the problem, no traceback, nothing left behind."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.cli import build, fixtures, verify
from engine.errors import WeightsError
from engine.models import weights

REPO = Path(__file__).resolve().parents[1]


def run_cli(main: Callable[[list[str]], int], argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse-level errors exit from inside parse_args
        code = exit_.code
    return code, capsys.readouterr().err


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def fixture_copy(fixtures_dir: Path, dest: Path, damaged: str | None = None, content: bytes | None = None) -> Path:
    """``dest`` laid out like the fixture set (links to it), with ``damaged`` replaced by ``content``
    or, without content, by its first half."""
    dest.mkdir()
    for f in fixtures_dir.iterdir():
        if f.name == damaged:
            data = f.read_bytes()
            (dest / f.name).write_bytes(data[: len(data) // 2] if content is None else content)
        else:
            (dest / f.name).symlink_to(f)
    return dest


# ----------------------------------------------------------------------------- engine.cli.fixtures


@pytest.mark.parametrize("name", ["liveportrait_io.safetensors", "wfm_unet_unet.safetensors",
                                  "pipeline_vae.safetensors", "liveportrait_warping_module.safetensors"])
def test_fixtures_truncated_safetensors(fixtures_dir: Path, tmp_path: Path, capsys, name: str) -> None:
    fx = fixture_copy(fixtures_dir, tmp_path / "fx", name)
    engines = tmp_path / "engines"
    code, err = run_cli(fixtures.main, [str(fx), "--engines", str(engines)], capsys)
    assert_clean_error(code, err, name, "damaged")
    assert not engines.exists()


@pytest.mark.parametrize("name", ["liveportrait_config.json", "wfm_unet_config.json", "pipeline_config.json"])
@pytest.mark.parametrize("content", [b'{"model_params": ', b"", b"\xff\xfe not text", b"[1, 2]"])
def test_fixtures_malformed_json_config(fixtures_dir: Path, tmp_path: Path, capsys, name: str,
                                        content: bytes) -> None:
    fx = fixture_copy(fixtures_dir, tmp_path / "fx", name, content)
    code, err = run_cli(fixtures.main, [str(fx)], capsys)
    assert_clean_error(code, err, name)
    assert "not valid JSON" in err or "not an object" in err


def test_fixtures_config_without_its_fields(fixtures_dir: Path, tmp_path: Path, capsys) -> None:
    fx = fixture_copy(fixtures_dir, tmp_path / "fx", "liveportrait_config.json", b"{}")
    code, err = run_cli(fixtures.main, [str(fx), "--kinds", "liveportrait"], capsys)
    assert_clean_error(code, err, "liveportrait_config.json", "model_params")


def test_fixtures_missing_weight_file(fixtures_dir: Path, tmp_path: Path, capsys) -> None:
    fx = fixture_copy(fixtures_dir, tmp_path / "fx")
    (fx / "pipeline_vae.safetensors").unlink()
    code, err = run_cli(fixtures.main, [str(fx), "--kinds", "pipeline"], capsys)
    assert_clean_error(code, err, "pipeline_vae.safetensors", "missing")


def test_fixtures_bad_paths_and_numbers(fixtures_dir: Path, tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for argv, needle in [
        ([str(a_file)], "is a file, not a folder"),
        ([str(fixtures_dir), "--engines", str(a_file)], "--engines"),
        ([str(fixtures_dir), "--engines", str(a_file / "sub")], "cannot be created"),
        ([str(fixtures_dir), "--threads", "0"], "--threads"),
        ([str(fixtures_dir), "--window-batch", "-1"], "--window-batch"),
        ([str(tmp_path)], "no <kind>_config.json"),
    ]:
        code, err = run_cli(fixtures.main, argv, capsys)
        assert_clean_error(code, err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ----------------------------------------------------------------------------- engine.cli.build


@pytest.mark.parametrize("extra, needle", [
    (["--size", "100"], "--size"), (["--size", "0"], "--size"), (["--size", "-64"], "--size"),
    (["--size", "96.0"], "--size"), (["--seed", "-1"], "--seed"), (["--seed", str(2**64)], "--seed"),
    (["--workspace-gib", "nan"], "not a finite number"), (["--workspace-gib", "inf"], "not a finite number"),
    (["--workspace-gib", "0"], "--workspace-gib"), (["--threads", "0"], "--threads"),
    (["--max-windows", "0"], "--max-windows"), (["--window-batch", "5"], "--window-batch"),
    (["--preset", "official"], "--weights"),
])
def test_build_bad_numbers(tmp_path: Path, capsys, extra: list[str], needle: str) -> None:
    out = tmp_path / "engines"
    code, err = run_cli(build.main, ["--out", str(out), *extra], capsys)
    assert_clean_error(code, err, needle)
    assert not out.exists()


def test_build_size_says_what_sizes_work(tmp_path: Path, capsys) -> None:
    code, err = run_cli(build.main, ["--out", str(tmp_path / "e"), "--size", "100"], capsys)
    assert_clean_error(code, err, "100", "multiple of 64")


def test_build_out_is_a_file(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "engines"
    a_file.write_text("keep me")
    code, err = run_cli(build.main, ["--out", str(a_file)], capsys)
    assert_clean_error(code, err, str(a_file), "is a file, not a folder")
    assert a_file.read_text() == "keep me"
    code, err = run_cli(build.main, ["--out", str(a_file / "sub")], capsys)
    assert_clean_error(code, err, "cannot be created", str(a_file))


def test_build_weights_paths_checked_before_work(tmp_path: Path, capsys) -> None:
    out = tmp_path / "engines"
    a_file = tmp_path / "w.txt"
    a_file.write_text("x")
    for weights_dir, needle in [(tmp_path / "nope", "does not exist"), (a_file, "is a file"),
                                (tmp_path, "lacks")]:
        code, err = run_cli(build.main, ["--preset", "official", "--weights", str(weights_dir),
                                         "--out", str(out)], capsys)
        assert_clean_error(code, err, str(weights_dir), needle)
        assert not out.exists()


# ----------------------------------------------------------------------------- engine.cli.verify


def test_verify_missing_folder_says_it_does_not_exist(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "engines"
    code, err = run_cli(verify.main, ["--backend", "onnxruntime", "--engines", str(missing)], capsys)
    assert_clean_error(code, err, str(missing), "does not exist")
    assert "holds no" not in err
    (tmp_path / "f").write_text("x")
    code, err = run_cli(verify.main, ["--backend", "onnxruntime", "--engines", str(tmp_path / "f")], capsys)
    assert_clean_error(code, err, "is a file")
    code, err = run_cli(verify.main, ["--backend", "onnxruntime", "--engines", str(tmp_path), "--threads", "0"],
                        capsys)
    assert_clean_error(code, err, "--threads")


def test_verify_empty_folder_holds_no_artifacts(tmp_path: Path, capsys) -> None:
    code, err = run_cli(verify.main, ["--backend", "onnxruntime", "--engines", str(tmp_path)], capsys)
    assert_clean_error(code, err, "holds no onnxruntime artifacts")


# ----------------------------------------------------------------------------- weights


def _weights_error(path: Path) -> str:
    with pytest.raises(WeightsError) as info:
        weights.read_state_dict(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg, msg
    # our words, not the reader's (torch's messages run to paragraphs and name internals)
    for internal in ("PytorchStreamReader", "Weights only load failed", "Errno", "SafetensorError", "mmap"):
        assert internal not in msg, msg
    return msg


def test_weights_errors_name_the_file_and_what_to_do(tmp_path: Path) -> None:
    good = {"w": torch.randn(64, 64)}
    torch.save(good, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert "download it again" in _weights_error(tmp_path / "cut.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    assert "is empty" in _weights_error(tmp_path / "empty.pth")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    assert "state_dict()" in _weights_error(tmp_path / "module.pth")
    (tmp_path / "text.pth").write_text("hello")
    assert "not a readable PyTorch checkpoint" in _weights_error(tmp_path / "text.pth")
    save_file(good, str(tmp_path / "good.safetensors"))
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:100])
    assert "not a complete safetensors" in _weights_error(tmp_path / "cut.safetensors")
    torch.save({"w": 3}, tmp_path / "numbers.pth")
    assert "state dict of tensors" in _weights_error(tmp_path / "numbers.pth")


def test_random_bytes_and_plain_pickles_are_named_for_what_they_are(tmp_path: Path) -> None:
    # random bytes used to be reported as "holds Python objects besides tensors (a whole pickled model?)"
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    msg = _weights_error(tmp_path / "random.pth")
    assert "not a readable PyTorch checkpoint" in msg and "pickled model" not in msg
    for protocol in (2, 4, 5):
        path = tmp_path / f"bare{protocol}.pth"
        with path.open("wb") as f:
            pickle.dump({"w": torch.randn(2, 2)}, f, protocol=protocol)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            msg = _weights_error(path)
        assert "plain Python pickle" in msg and "torch.save(model.state_dict()" in msg, msg
        assert [str(w.message) for w in seen] == []  # torch's pickle-protocol UserWarning no longer shows


def test_a_bare_pickle_is_one_error_line_from_the_cli(tmp_path: Path) -> None:
    # the real command: before the fix, torch's UserWarning (pickle protocol) came before our error line
    weights_dir = tmp_path / "pretrained_weights"
    for slot in weights.LAYOUT:
        path = weights_dir / slot.candidates[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            pickle.dump({"w": torch.randn(2, 2)}, f, protocol=4)
    out = tmp_path / "out.mp4"
    res = subprocess.run([sys.executable, "-m", "engine.reenact", "--preset", "official", "--weights",
                          str(weights_dir), "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint ") and "plain Python pickle" in lines[0], lines
    assert not out.exists()


def test_legacy_torch_save_format_still_loads(tmp_path: Path) -> None:
    # pre-1.6 files are not zip archives and cannot be memory-mapped; they are still valid checkpoints
    good = {"w": torch.randn(3, 3)}
    torch.save(good, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(weights.read_state_dict(tmp_path / "old.pth")["w"], good["w"])


def test_weights_json_config_errors(tmp_path: Path) -> None:
    path = tmp_path / weights.CONFIG_FILES["unet"]
    path.parent.mkdir(parents=True)
    for content, needle in [("{", "not valid JSON (line 1"), ("[]", "not an object"), ("\udcff", "not valid JSON")]:
        path.write_bytes(content.encode("utf-8", "surrogateescape"))
        with pytest.raises(WeightsError, match="restore it from the release") as info:
            weights.read_json_config(tmp_path, "unet")
        assert str(path) in str(info.value) and needle in str(info.value)
    path.write_text(json.dumps({"ok": 1}))
    assert weights.read_json_config(tmp_path, "unet") == {"ok": 1}
