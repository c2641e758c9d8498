"""The ``train_step`` fixture kind: a tampered gradient (a real one, and one that is zero in exact
arithmetic) makes ``python -m engine.fixtures`` fail on exactly those rows."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from engine.cli import fixtures


def test_tampered_gradients_fail(fixtures_dir: Path, tmp_path: Path, capsys) -> None:
    for f in fixtures_dir.iterdir():
        if f.name != "train_step_io.safetensors":
            (tmp_path / f.name).symlink_to(f)
    ref = load_file(str(fixtures_dir / "train_step_io.safetensors"))
    real = "grad.head_embedder.final_proj.weight"
    zero = "grad.warping_feature_mapper.mid_block.resnets.0.spatial_res_block.conv1.bias"  # GroupNorm(32) on 32 ch
    assert ref[zero].abs().max() < 1e-8 < ref[real].abs().max()
    ref[real] = ref[real] + 2e-3 * ref[real].abs().max()  # just above the 1e-3 tolerance
    ref[zero] = ref[zero] + 1e-3
    save_file({k: v.contiguous() for k, v in ref.items()}, str(tmp_path / "train_step_io.safetensors"))

    code = fixtures.main([str(tmp_path), "--kinds", "train_step"])
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("train_step ")}
    assert code == 1
    failed = {name for name, line in rows.items() if line.endswith("FAIL")}
    assert failed == {real, zero}, failed
    assert rows["loss"].endswith("pass") and rows["grad_norm_total"].endswith("pass")
    assert len(rows) == 899  # 16 values + 883 gradients
