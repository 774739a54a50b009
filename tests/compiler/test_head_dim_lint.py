"""QC153: `qcompile lint` warns when no backend runs a recipe's dtype at its model's head dims (the torch-free
manifest qcompiler/backends.json, generated from the runtime's backend registrations), and says what can serve it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from qcompiler.cli.main import cli
from qcompiler.families import BUILTIN_FAMILY_DIR


def recipe_for_head_dim(tmp_path, monkeypatch, head_dim: int, dtype: str = "fp8_e4m3_per_block",
                        default: str = "fp8"):
    """A recipe for wan2.1-t2v-1.3b with every component at `head_dim` (a family from $QCOMPILE_FAMILY_PATH)."""
    data = json.loads(next(p for p in BUILTIN_FAMILY_DIR.glob("*.json") if "t2v_13b" in p.name).read_text())
    data["name"] = f"test-wan-hd{head_dim}"
    for component in data["components"]:
        component["head_dim"] = head_dim
    families = tmp_path / "families"
    families.mkdir()
    (families / "family.json").write_text(json.dumps(data))
    monkeypatch.setenv("QCOMPILE_FAMILY_PATH", str(families))
    path = tmp_path / "hd.yaml"
    path.write_text(f"version: 1\nfamily: {data['name']}\nnum_inference_steps: 4\ndtype: {dtype}\n"
                    f"fallback: native\nattention_kinds: [self]\ndefault: {default}\n", encoding="utf-8")
    return path


def test_head_dim_no_backend_runs_is_a_warning_naming_who_runs_what(tmp_path, monkeypatch):
    path = recipe_for_head_dim(tmp_path, monkeypatch, 12)
    result = CliRunner().invoke(cli, ["lint", str(path)])
    assert result.exit_code == 0, result.output
    assert (f"{path}:2:9: warning[QC153] test-wan-hd12 transformer has head dim 12: no attention backend runs "
            "fp8_e4m3_per_block at head dim 12 (reference, npu-quant-attention, npu-mindiesd-fia, npu-torch-fia, "
            "fp8-triton take head dim 64 or 128); its quantized cells can only follow `fallback` (native)"
            ) in result.output
    assert "no dtype runs at head dim 12" in result.output
    strict = CliRunner().invoke(cli, ["lint", "--strict", "--format", "json", str(path)])
    assert strict.exit_code == 1 and [f["code"] for f in json.loads(strict.stdout)] == ["QC153"]


@pytest.mark.parametrize(("dtype", "head_dim", "hint"), [
    ("fp8_e4m3_per_block", 256, "use dtype int8_per_tensor, which a backend runs at head dim 256"),
    # rotations need a power of two and FP8 takes 64/128; SageAttention's kernels take 96 (sage-v1, sage-sm90)
    ("int8_per_tensor", 96, "use dtype sage1_int8_fp16pv or sage2_int8_fp8pv_sm90, which a backend runs at head dim 96"),
])
def test_the_hint_names_a_dtype_that_would_run(tmp_path, monkeypatch, dtype, head_dim, hint):
    path = recipe_for_head_dim(tmp_path, monkeypatch, head_dim, dtype)
    result = CliRunner().invoke(cli, ["lint", str(path)])
    assert "warning[QC153]" in result.output and hint in result.output, result.output


def test_no_warning_when_a_backend_serves_or_nothing_is_quantized(tmp_path, monkeypatch, repo_root):
    path = recipe_for_head_dim(tmp_path, monkeypatch, 12, default="native")
    assert "QC153" not in CliRunner().invoke(cli, ["lint", str(path)]).output  # QC202 says it, not QC153
    result = CliRunner().invoke(cli, ["lint", "--strict", str(repo_root / "recipes")])
    assert "QC153" not in result.output
