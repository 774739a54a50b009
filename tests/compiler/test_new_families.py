"""Issue 20, compiler side: HunyuanVideo-1.5, LTX-Video, CogVideoX 2B/5B, Flux.1 dev/schnell and Qwen-Image as
family data, each with a shipped recipe and plan that lint, compile, show per block list, check and refuse to be
diffed against another family or exported to an engine whose settings exist for Wan only."""

from __future__ import annotations

import json

import jsonschema
import pytest
from click.testing import CliRunner

from qcompiler import compile_recipe_text
from qcompiler.cli.main import cli
from qcompiler.compile.compiler import compile_path
from qcompiler.errors import FamilyError
from qcompiler.families import BUILTIN_FAMILY_DIR, FAMILY_PATH_ENV, get_family
from qcompiler.plan.format import load_plan
from qcompiler.schemas import load_schema
from qcompiler.targets.cells import UnsupportedFamilyError
from qcompiler.targets.mindiesd import export_mindiesd
from qcompiler.targets.vllm_omni import export_vllm_omni
from qcompiler.targets.xdit import export_xdit
from tests.conftest import RECIPES_DIR

# recipe -> (family, data file, steps: the diffusers 0.42.1 pipeline's `num_inference_steps` default, except
# schnell, which is timestep-distilled for 1-4 steps)
NEW = {
    "flux1_dev": ("flux.1-dev", "flux1_dev", 28),
    "flux1_schnell": ("flux.1-schnell", "flux1_schnell", 4),
    "hunyuanvideo15_t2v_480p": ("hunyuanvideo1.5-t2v-480p", "hunyuanvideo15_t2v_480p", 50),
    "hunyuanvideo_t2v_720p": ("hunyuanvideo-t2v-720p", "hunyuanvideo_t2v_720p", 50),
    "ltx_video": ("ltx-video", "ltx_video", 50),
    "ltx2": ("ltx-2", "ltx2", 30),
    "skyreels_v2_t2v_540p": ("skyreels-v2-t2v-14b-540p", "skyreels_v2_t2v_14b_540p", 50),
    "skyreels_v2_df_540p": ("skyreels-v2-df-14b-540p", "skyreels_v2_df_14b_540p", 50),
    "mochi1": ("mochi-1", "mochi1", 64),
    "cogvideox_2b": ("cogvideox-2b", "cogvideox_2b", 50),
    "cogvideox_5b": ("cogvideox-5b", "cogvideox_5b", 50),
    "qwen_image": ("qwen-image", "qwen_image", 50),
}
# What each recipe quantizes (the rest of the family's kinds stay native; the recipes' comments say why).
SCOPE = {"flux1_dev": ["joint", "single"], "flux1_schnell": ["joint", "single"], "hunyuanvideo15_t2v_480p": ["joint"],
         "hunyuanvideo_t2v_720p": ["joint", "single"], "ltx2": ["video_self"],
         "skyreels_v2_t2v_540p": ["self"], "skyreels_v2_df_540p": ["self"],
         "mochi1": ["joint"],
         "ltx_video": ["self"], "cogvideox_2b": ["joint"], "cogvideox_5b": ["joint"], "qwen_image": ["joint"]}
EXPORTS = {"vllm-omni": export_vllm_omni, "MindIE-SD 3.1.0": export_mindiesd, "xDiT (xfuser 0.7.0)": export_xdit}
runner = CliRunner()


def _plan(recipe: str):
    return load_plan(RECIPES_DIR / f"{recipe}.plan.json")


@pytest.mark.parametrize("recipe", sorted(NEW))
def test_family_files_are_valid_format_2_and_load(recipe):
    name, data_file, _ = NEW[recipe]
    data = json.loads((BUILTIN_FAMILY_DIR / f"{data_file}.json").read_text())
    jsonschema.Draft202012Validator(load_schema("family")).validate(data)
    family = get_family(name)
    assert family.name == name and family.variants == ("tiny",)
    tiny = get_family(name, "tiny")
    # block lists never change in a variant; the tiny model is 2 heads x 64 so the FP8 path runs on CPU
    assert [c.block_lists for c in tiny.components] == [c.block_lists for c in family.components]
    assert {tiny.heads("transformer", k) for k in tiny.kinds} == {(2, 64)}
    # the FP8 kernels take head dims 64 and 128 (QC153): every new family is one of them at real size
    assert {family.heads("transformer", k)[1] for k in family.kinds} <= {64, 128}


def test_flow_shift_null_is_for_one_component_families_only(tmp_path, monkeypatch):
    assert get_family("flux.1-dev").flow_shift is None and get_family("flux.1-schnell").flow_shift == 1.0
    data = json.loads((BUILTIN_FAMILY_DIR / "wan22_i2v_a14b.json").read_text())
    data.update(name="two-experts-no-shift")
    data["scheduler"]["flow_shift"] = None
    (tmp_path / "two.json").write_text(json.dumps(data))
    monkeypatch.setenv(FAMILY_PATH_ENV, str(tmp_path))
    with pytest.raises(FamilyError, match=r"two.json: \$.scheduler.flow_shift: a two-component family needs a "
                                          r"number here \(the expert schedule is predicted from it\)"):
        get_family("two-experts-no-shift")


def test_a_variant_may_not_null_a_two_component_familys_shift(tmp_path, monkeypatch):
    data = json.loads((BUILTIN_FAMILY_DIR / "wan22_i2v_a14b.json").read_text())
    data.update(name="two-experts-tiny-no-shift")
    data["variants"]["tiny"]["scheduler"]["flow_shift"] = None
    (tmp_path / "two.json").write_text(json.dumps(data))
    monkeypatch.setenv(FAMILY_PATH_ENV, str(tmp_path))
    with pytest.raises(FamilyError, match=r"\$.variants.tiny.scheduler.flow_shift: a two-component family"):
        get_family("two-experts-tiny-no-shift", "tiny")


@pytest.mark.parametrize("recipe", sorted(NEW))
def test_shipped_recipe_compiles_to_its_committed_plan(recipe):
    name, _, steps = NEW[recipe]
    result = compile_path(RECIPES_DIR / f"{recipe}.yaml")
    assert not result.diagnostics, result.diagnostics
    plan = result.plan
    assert plan.data == _plan(recipe).data
    committed = json.loads((RECIPES_DIR / f"{recipe}.plan.json").read_text())
    jsonschema.Draft202012Validator(load_schema("plan")).validate(committed)  # flow_shift may be null
    assert (plan.family_name, plan.num_inference_steps) == (name, steps)
    assert plan.data["recipe"]["default"] == "fp8"
    family = plan.family
    edge = -(-15 * steps // 100)  # "first 15%, last 15%" rounds up
    middle = steps // 2
    for kind in family.kinds:
        for step, row in enumerate(plan.table("transformer", kind)):
            if kind not in SCOPE[recipe] or step < edge or step >= steps - edge:
                assert not any(row), (kind, step)  # out of scope, or an edge step: native
        if kind in SCOPE[recipe]:
            # the first and last block of the kind's own block list are native, every other block quantized
            row = plan.table("transformer", kind)[middle]
            assert [layer for layer, fp8 in enumerate(row) if not fp8] == [0, len(row) - 1], kind
    for rule in plan.data["rules"]:
        assert rule["cells_changed"] > 0, rule["name"]


def test_flux_edge_blocks_are_native_in_each_block_list():
    plan = _plan("flux1_dev")
    joint, single = plan.table("transformer", "joint")[10], plan.table("transformer", "single")[10]
    assert (len(joint), len(single)) == (19, 38)
    assert (joint[0], joint[18], single[0], single[37]) == (False,) * 4 and all(joint[1:18]) and all(single[1:37])
    changed = {r["name"]: r["changed"] for r in plan.data["rules"]}
    assert changed["edge-joint-blocks"] == {"transformer": {"joint": 2 * 18}}
    assert changed["edge-single-blocks"] == {"transformer": {"single": 2 * 18}}


@pytest.mark.parametrize("recipe", sorted(NEW))
def test_shipped_recipe_compiles_for_the_tiny_variant(recipe):
    text = (RECIPES_DIR / f"{recipe}.yaml").read_text()
    plan = compile_recipe_text(text, variant="tiny")
    assert plan.variant == "tiny" and plan.data["tables"] == _plan(recipe).data["tables"]


def test_every_rule_of_the_new_recipes_says_why():
    import yaml

    for recipe in NEW:
        data = yaml.safe_load((RECIPES_DIR / f"{recipe}.yaml").read_text())
        assert all(rule.get("why") for rule in data["rules"]), recipe


def test_lint_strict_and_check_are_clean_on_the_shipped_recipes():
    lint = runner.invoke(cli, ["lint", "--strict", "--format", "json", str(RECIPES_DIR)])
    assert lint.exit_code == 0 and json.loads(lint.output) == []
    check = runner.invoke(cli, ["check", str(RECIPES_DIR)])
    assert check.exit_code == 0, check.output
    for recipe in NEW:
        assert f"{recipe}.yaml: {RECIPES_DIR / recipe}.plan.json is up to date" in check.output


def test_check_sees_a_stale_new_family_plan(tmp_path):
    (tmp_path / "flux1_dev.yaml").write_text((RECIPES_DIR / "flux1_dev.yaml").read_text())
    (tmp_path / "flux1_dev.plan.json").write_text((RECIPES_DIR / "flux1_schnell.plan.json").read_text())
    check = runner.invoke(cli, ["check", str(tmp_path)])
    assert check.exit_code == 1 and "Traceback" not in check.output


def test_head_dim_lint_names_a_new_family(tmp_path, monkeypatch):
    data = json.loads((BUILTIN_FAMILY_DIR / "flux1_dev.json").read_text())
    data["name"] = "flux-hd96"
    data["components"][0]["head_dim"] = 96
    (tmp_path / "f.json").write_text(json.dumps(data))
    monkeypatch.setenv(FAMILY_PATH_ENV, str(tmp_path))
    recipe = tmp_path / "r.yaml"
    recipe.write_text((RECIPES_DIR / "flux1_dev.yaml").read_text().replace("family: flux.1-dev", "family: flux-hd96"))
    lint = runner.invoke(cli, ["lint", "--strict", str(recipe)])
    assert lint.exit_code == 1 and "warning[QC153] flux-hd96 transformer has head dim 96" in lint.output


def test_families_lists_the_new_families():
    result = runner.invoke(cli, ["families"])
    assert result.exit_code == 0
    for name, _, _ in NEW.values():
        assert f"\n{name}: " in "\n" + result.output
    assert ("transformer (denoiser: 19 transformer_blocks + 38 single_transformer_blocks, 24x128); kinds: joint "
            "(transformer_blocks), single (single_transformer_blocks); variants: tiny") in result.output
    assert ("transformer (denoiser: 54 transformer_blocks + 2 refiner_blocks, 16x128); kinds: joint "
            "(transformer_blocks), refiner (refiner_blocks); variants: tiny") in result.output


def test_show_labels_each_block_list():
    result = runner.invoke(cli, ["show", str(RECIPES_DIR / "flux1_dev.plan.json")])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    joint = lines.index("transformer / transformer_blocks / joint-attention  (# fp8, . native)")
    single = lines.index("transformer / single_transformer_blocks / single-attention  (# fp8, . native)")
    assert joint < single
    assert lines[joint + 2] == "             " + "".join(str(i % 10) for i in range(19))
    assert lines[joint + 3 + 10] == "  step   10  .#################.   17/19 fp8"
    assert lines[single + 3 + 10] == "  step   10  ." + "#" * 36 + ".   36/38 fp8"
    only = runner.invoke(cli, ["show", str(RECIPES_DIR / "hunyuanvideo15_t2v_480p.plan.json"), "--kind", "refiner"])
    assert only.exit_code == 0
    assert "transformer / refiner_blocks / refiner-attention" in only.output and "joint-attention" not in only.output
    assert only.output.count("   0/2 fp8") == 50  # the refiner is out of the recipe's scope: native


@pytest.mark.parametrize(("a", "b"), [("flux1_dev", "flux1_schnell"), ("cogvideox_2b", "cogvideox_5b"),
                                      ("qwen_image", "wan22_ti2v_5b")])
def test_diff_between_two_families_refuses(a, b):
    result = runner.invoke(cli, ["diff", str(RECIPES_DIR / f"{a}.plan.json"), str(RECIPES_DIR / f"{b}.plan.json")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cannot compare cell by cell" in result.output


def test_diff_of_the_same_family_still_compares(tmp_path):
    other = tmp_path / "dev.yaml"
    other.write_text((RECIPES_DIR / "flux1_dev.yaml").read_text().replace(
        '    block_lists: [single_transformer_blocks]\n    layers: "first 1, last 1"',
        '    block_lists: [single_transformer_blocks]\n    layers: "first 2, last 1"'))
    result = runner.invoke(cli, ["diff", str(RECIPES_DIR / "flux1_dev.plan.json"), str(other)])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == "transformer/single step 5: fp8 -> native layers 1"


WHAT_IS_MISSING = {
    "vllm-omni": "vllm-omni's FP8 attention gate is Wan-only: its layer tags and expert routing exist for Wan",
    "MindIE-SD 3.1.0": "the export's module patterns are Wan-only",
    "xDiT (xfuser 0.7.0)": "the --hybrid_attn_schedule export is Wan-only",
}


@pytest.mark.parametrize("target", sorted(EXPORTS))
@pytest.mark.parametrize("recipe", sorted(NEW))
def test_exports_refuse_each_new_family_naming_what_is_missing(recipe, target):
    plan = _plan(recipe)
    model = plan.family.components[0].diffusers_class
    module = plan.family.module_path("transformer", plan.family.kinds[0], 0)
    with pytest.raises(UnsupportedFamilyError) as refused:
        EXPORTS[target](plan)
    message = str(refused.value)
    assert message.startswith(f"plan {plan.content_hash[:12]} ({plan.family_name}: {model}) cannot be exported "
                              f"to {target}: {WHAT_IS_MISSING[target]}")
    assert f"(such as {module})" in message and "runtime.load" in message
    # an all-native plan of the family is refused too: the settings could not even say "nothing"
    with pytest.raises(UnsupportedFamilyError):
        EXPORTS[target](compile_recipe_text(
            (RECIPES_DIR / f"{recipe}.yaml").read_text().replace("default: fp8", "default: native")
            .split("rules:")[0]))


@pytest.mark.parametrize("target", ["vllm-omni", "mindiesd", "xdit"])
def test_export_cli_refuses_a_new_family_without_a_traceback(target):
    result = runner.invoke(cli, ["export", "--to", target, str(RECIPES_DIR / "flux1_dev.plan.json")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("error: plan 9f12a6d71fc7 (flux.1-dev: FluxTransformer2DModel) cannot be exported")
    assert "Wan-only" in result.output


def test_wan_still_exports_exactly():
    flags = runner.invoke(cli, ["export", "--to", "vllm-omni", str(RECIPES_DIR / "wan22_i2v.plan.json"),
                                "--format", "flags"])
    assert flags.exit_code == 0
    assert flags.output.splitlines()[0] == (
        '--diffusion-kv-cache-dtype fp8 --diffusion-kv-cache-skip-steps "0,3" --diffusion-kv-cache-skip-layers '
        '"0,39" --boundary-ratio 0.9 --flow-shift 5.0')
    mindiesd = export_mindiesd(load_plan(RECIPES_DIR / "wan22_i2v.plan.json"))
    assert [c.fa_layers[0] for c in mindiesd.configs] == ["blocks.1.attn1"]
    ti2v = load_plan(RECIPES_DIR / "wan22_ti2v_5b.plan.json")
    assert export_xdit(ti2v, conservative=True).num_inference_steps == 50
