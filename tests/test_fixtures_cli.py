"""``python -m engine.fixtures`` on the public fixture set: every tensor of every kind passes,
and a tampered reference makes it fail."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from engine.cli import fixtures


def test_public_fixture_set_passes(fixtures_dir: Path, capsys) -> None:
    code = fixtures.main([str(fixtures_dir)])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.split()[:1] and line.split()[0] in fixtures.KINDS]
    assert code == 0, out
    assert {r.split()[0] for r in rows} == set(fixtures.KINDS)
    assert rows and all(r.endswith("pass") for r in rows)
    names = {r.split()[1] for r in rows}
    for must in ("x_d_new", "warp_out", "wfm_infofill", "unet_ref_out", "step2_win1_unet_out", "frames"):
        assert must in names
    assert "0 failed" in out


def test_a_tampered_reference_fails(fixtures_dir: Path, tmp_path: Path, capsys) -> None:
    for f in fixtures_dir.iterdir():
        if f.name.startswith("pipeline_") or f.name.startswith(("liveportrait_", "wfm_unet_")):
            if f.name not in ("pipeline_io.safetensors", "liveportrait_config.json", "wfm_unet_config.json"):
                (tmp_path / f.name).symlink_to(f)
    ref = load_file(str(fixtures_dir / "pipeline_io.safetensors"))
    ref["frames"] = ref["frames"] + 1e-3 * ref["frames"].abs().max()  # just above the 1e-4 tolerance
    save_file({k: v.contiguous() for k, v in ref.items()}, str(tmp_path / "pipeline_io.safetensors"))
    code = fixtures.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    frames_row = next(line for line in out.splitlines() if " frames " in f" {line} ")
    assert frames_row.endswith("FAIL")
    assert [line for line in out.splitlines() if line.endswith("FAIL")] == [frames_row]  # only that one


def test_missing_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert fixtures.main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
