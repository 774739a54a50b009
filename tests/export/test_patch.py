"""qcompiler.targets.pipeline_dir on a real saved tiny pipeline folder: embed, refuse, remove, byte for byte."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qcompiler import compile_recipe_text
from qcompiler.errors import PlanError
from qcompiler.plan.format import load_plan, write_plan
from qcompiler.targets.pipeline_dir import (
    BACKUP_SUFFIX,
    PLAN_KEY,
    PatchError,
    embedded_plan_from_config,
    embedded_plan_from_configs,
    patch_pipeline_dir,
    remove_patch,
)

from .conftest import RECIPE

COMPONENTS = ("transformer", "transformer_2")


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: relative path -> (bytes, permission bits)."""
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mode & 0o7777)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def config(folder: Path, component: str) -> dict:
    return json.loads((folder / component / "config.json").read_text())


def test_patch_then_remove_restores_the_folder_byte_for_byte(pipeline_dir, tiny_plan_path):
    for component in COMPONENTS:
        os.chmod(pipeline_dir / component / "config.json", 0o644)  # mkstemp alone would leave 0600
    before = snapshot(pipeline_dir)
    result = patch_pipeline_dir(pipeline_dir, tiny_plan_path)
    assert result.patched == COMPONENTS and result.already == ()
    after_patch = snapshot(pipeline_dir)
    changed = {name for name in after_patch if after_patch[name] != before.get(name)}
    assert changed == {f"{c}/config.json" for c in COMPONENTS} | {f"{c}/config.json{BACKUP_SUFFIX}" for c in COMPONENTS}
    for component in COMPONENTS:
        assert after_patch[f"{component}/config.json{BACKUP_SUFFIX}"] == before[f"{component}/config.json"]
        assert after_patch[f"{component}/config.json"][1] == 0o644
    removed = remove_patch(pipeline_dir)
    assert removed.restored == COMPONENTS and removed.key_removed == ()
    assert snapshot(pipeline_dir) == before


def test_patched_config_is_the_original_plus_the_plan(config_only_pipeline_dir, tiny_plan_path):
    folder = config_only_pipeline_dir
    originals = {c: config(folder, c) for c in COMPONENTS}
    patch_pipeline_dir(folder, tiny_plan_path)
    plan = load_plan(tiny_plan_path)
    for component in COMPONENTS:
        patched = config(folder, component)
        assert "quantization_config" not in patched  # reserved for weight quantizers: breaks loading
        embedded = embedded_plan_from_config(patched)
        assert load_plan(embedded).content_hash == plan.content_hash
        assert embedded == plan.to_dict()
        assert {k: v for k, v in patched.items() if k != PLAN_KEY} == originals[component]


def test_patching_again_with_the_same_plan_changes_nothing(config_only_pipeline_dir, tiny_plan_path):
    patch_pipeline_dir(config_only_pipeline_dir, tiny_plan_path)
    before = snapshot(config_only_pipeline_dir)
    again = patch_pipeline_dir(config_only_pipeline_dir, tiny_plan_path)
    assert again.patched == () and again.already == COMPONENTS
    assert snapshot(config_only_pipeline_dir) == before


def test_patching_over_another_plan_is_refused(config_only_pipeline_dir, tiny_plan_path, tmp_path):
    patch_pipeline_dir(config_only_pipeline_dir, tiny_plan_path)
    before = snapshot(config_only_pipeline_dir)
    other = tmp_path / "other.json"
    write_plan(compile_recipe_text(RECIPE.replace("0-2", "0-3"), variant="tiny"), other)
    with pytest.raises(PatchError, match=r"already carries qcompile plan [0-9a-f]{12}, not [0-9a-f]{12}") as caught:
        patch_pipeline_dir(config_only_pipeline_dir, other)
    assert f"qcompile patch {config_only_pipeline_dir} --remove" in str(caught.value)
    assert snapshot(config_only_pipeline_dir) == before


def test_plan_for_the_full_size_model_is_refused_on_the_tiny_pipeline(config_only_pipeline_dir, tmp_path):
    before = snapshot(config_only_pipeline_dir)
    full_size = tmp_path / "full.json"
    write_plan(compile_recipe_text(RECIPE), full_size)  # 40 heads x 128; the tiny pipeline has 2 x 64
    with pytest.raises(PatchError) as caught:
        patch_pipeline_dir(config_only_pipeline_dir, full_size)
    message = str(caught.value)
    assert "transformer: num_attention_heads is 2, the plan expects 40" in message
    assert "transformer_2: attention_head_dim is 64, the plan expects 128" in message
    assert "--variant tiny" in message
    assert snapshot(config_only_pipeline_dir) == before  # checked everything before writing anything


def test_plan_for_another_family_is_refused(config_only_pipeline_dir, tmp_path):
    ti2v = tmp_path / "ti2v.json"
    text = RECIPE.replace("wan2.2-i2v-a14b", "wan2.2-ti2v-5b").replace("components: [transformer, transformer_2]\n", "")
    write_plan(compile_recipe_text(text, variant="tiny"), ti2v)
    with pytest.raises(PatchError) as caught:
        patch_pipeline_dir(config_only_pipeline_dir, ti2v)
    message = str(caught.value)
    assert "pipeline class is WanImageToVideoPipeline, the plan's family uses WanPipeline" in message
    assert "transformer components are ['transformer', 'transformer_2'], the plan has ['transformer']" in message


def test_a_component_folder_is_not_a_pipeline_folder(config_only_pipeline_dir, tiny_plan_path):
    with pytest.raises(PatchError, match="no model_index.json: not a saved diffusers pipeline"):
        patch_pipeline_dir(config_only_pipeline_dir / "transformer", tiny_plan_path)


def test_an_edited_plan_is_refused_before_touching_the_folder(config_only_pipeline_dir, tiny_plan_path, tmp_path):
    data = json.loads(tiny_plan_path.read_text())
    data["tables"]["transformer"]["self"][1] = "0" * 40
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="edited after compiling"):
        patch_pipeline_dir(config_only_pipeline_dir, edited)
    assert not list(config_only_pipeline_dir.rglob(f"*{BACKUP_SUFFIX}"))


def test_remove_keeps_changes_made_after_patching(config_only_pipeline_dir, tiny_plan_path):
    patch_pipeline_dir(config_only_pipeline_dir, tiny_plan_path)
    path = config_only_pipeline_dir / "transformer" / "config.json"
    edited = {**json.loads(path.read_text()), "_diffusers_version": "9.9.9"}
    path.write_text(json.dumps(edited))
    removed = remove_patch(config_only_pipeline_dir)
    assert removed.key_removed == ("transformer",) and removed.restored == ("transformer_2",)
    after = config(config_only_pipeline_dir, "transformer")
    assert PLAN_KEY not in after and after["_diffusers_version"] == "9.9.9"
    assert not list(config_only_pipeline_dir.rglob(f"*{BACKUP_SUFFIX}"))


def test_remove_on_an_unpatched_folder_says_so(config_only_pipeline_dir):
    with pytest.raises(PatchError, match="carries no qcompile plan"):
        remove_patch(config_only_pipeline_dir)


def test_a_stale_backup_is_never_overwritten(config_only_pipeline_dir, tiny_plan_path):
    patch_pipeline_dir(config_only_pipeline_dir, tiny_plan_path)
    backup = config_only_pipeline_dir / "transformer" / f"config.json{BACKUP_SUFFIX}"
    (config_only_pipeline_dir / "transformer" / "config.json").write_bytes(b'{"_class_name": "WanTransformer3DModel"}')
    with pytest.raises(PatchError, match="config.json was replaced after patching"):
        remove_patch(config_only_pipeline_dir)
    assert backup.exists()


def test_embedded_plan_readers():
    assert embedded_plan_from_config({"num_layers": 40}) is None
    with pytest.raises(PlanError, match="not a plan object"):
        embedded_plan_from_config({PLAN_KEY: "plan.json"})
    same = {PLAN_KEY: {"content_sha256": "a" * 64}}
    assert embedded_plan_from_configs({"transformer": same, "transformer_2": same}) == same[PLAN_KEY]
    assert embedded_plan_from_configs({"transformer": {}, "transformer_2": {}}) is None
    with pytest.raises(PlanError, match="transformer: aaaaaaaaaaaa, transformer_2: none"):
        embedded_plan_from_configs({"transformer": same, "transformer_2": {}})
