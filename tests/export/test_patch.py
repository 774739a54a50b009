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


# -- all or nothing: unwritable files, older half patches, leftovers, hostile files ---------------------------


@pytest.fixture
def unwritable():
    """Make a path unwritable for real: immutable (chattr +i) as root, read-only otherwise; undone after the test."""
    import shutil
    import subprocess

    made: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() == 0:
            if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
                pytest.skip("running as root without chattr +i: nothing can be made unwritable")
        else:
            path.chmod(0o555 if path.is_dir() else 0o444)
        made.append(path)

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=False)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.parametrize("target", ["transformer_2/config.json", "transformer_2"])
def test_an_unwritable_file_is_found_before_anything_changes(config_only_pipeline_dir, tiny_plan_path, unwritable,
                                                             target):
    folder = config_only_pipeline_dir
    before = snapshot(folder)
    unwritable(folder / target)
    with pytest.raises(PatchError, match=r"nothing was changed in .*: these cannot be written\n  .*transformer_2"):
        patch_pipeline_dir(folder, tiny_plan_path)
    assert snapshot(folder) == before  # no backup, no journal, no temp file left behind


def test_remove_with_an_unwritable_file_changes_nothing(config_only_pipeline_dir, tiny_plan_path, unwritable):
    folder = config_only_pipeline_dir
    patch_pipeline_dir(folder, tiny_plan_path)
    before = snapshot(folder)
    unwritable(folder / "transformer_2" / f"config.json{BACKUP_SUFFIX}")
    with pytest.raises(PatchError, match="cannot be written"):
        remove_patch(folder)
    assert snapshot(folder) == before


def _older_half_patch(folder: Path, plan_path: Path, kind: str) -> None:
    """The states an interrupted patch of an older qcompile left (it wrote transformer first, backup first)."""
    patch_pipeline_dir(folder, plan_path)
    second = folder / "transformer_2"
    if kind == "stale backup":  # killed after writing transformer_2's backup, before its config
        (second / "config.json").write_bytes((second / f"config.json{BACKUP_SUFFIX}").read_bytes())
    else:  # killed between the two components
        (second / "config.json").write_bytes((second / f"config.json{BACKUP_SUFFIX}").read_bytes())
        (second / f"config.json{BACKUP_SUFFIX}").unlink()


@pytest.mark.parametrize("kind", ["stale backup", "no second backup"])
def test_patch_and_remove_repair_a_folder_an_older_version_left_half_patched(config_only_pipeline_dir,
                                                                              tiny_plan_path, tmp_path, kind):
    folder = config_only_pipeline_dir
    stock = snapshot(folder)
    patch_pipeline_dir(folder, tiny_plan_path)
    patched = snapshot(folder)
    remove_patch(folder)
    _older_half_patch(folder, tiny_plan_path, kind)
    with pytest.raises(PlanError, match="transformer_2: none"):  # what runtime.load(pipe) sees: refused, not guessed
        embedded_plan_from_configs({c: config(folder, c) for c in COMPONENTS})
    half = snapshot(folder)
    result = patch_pipeline_dir(folder, tiny_plan_path)
    assert result.patched == ("transformer_2",) and result.already == ("transformer",)
    assert snapshot(folder) == patched
    for name, data in half.items():  # back to the half state, then remove
        (folder / name).write_bytes(data[0])
    for extra in set(snapshot(folder)) - set(half):
        (folder / extra).unlink()
    removed = remove_patch(folder)
    assert removed.restored == ("transformer",)
    assert removed.stale_backups == (("transformer_2",) if kind == "stale backup" else ())
    assert snapshot(folder) == stock


def test_a_reader_takes_a_folder_whose_first_transformer_has_no_plan_as_not_patched():
    # The first transformer is the commit point: what an interrupted patch or removal leaves loads as stock.
    same = {PLAN_KEY: {"content_sha256": "a" * 64}}
    assert embedded_plan_from_configs({"transformer": {}, "transformer_2": same}) is None
    assert embedded_plan_from_configs({"transformer_2": same, "transformer": {}}) is None


def test_leftover_temp_files_of_ours_are_deleted_and_others_kept(config_only_pipeline_dir, tiny_plan_path):
    folder = config_only_pipeline_dir
    # the names write_bytes_atomically gives (with the writer's pid), and those of older qcompile versions
    ours = [folder / "transformer" / ".config.json.qcompile-tmp-4242.ab3_x9z0.tmp",
            folder / "..qcompile-patch-journal.json.qcompile-tmp-7.abcdefgh.tmp",
            folder / "transformer_2" / ".config.json.qcompile-backup.qcompile-tmp-99999.12345678.tmp",
            folder / ".qcompile-probe.zz_9a8b7.tmp",
            folder / "transformer" / ".config.json.ab3_x9z0.tmp", folder / "..qcompile-patch-journal.json.abcdefgh.tmp",
            folder / "transformer_2" / ".config.json.qcompile-backup.12345678.tmp"]
    theirs = [folder / "transformer" / ".config.json.keep.tmp", folder / "transformer" / "notes.tmp"]
    for path in ours + theirs:
        path.write_text("{")
    patch_pipeline_dir(folder, tiny_plan_path)
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)


def test_a_remove_with_nothing_to_remove_still_deletes_a_killed_runs_temp_file(config_only_pipeline_dir):
    """A patch killed while writing its journal leaves only the journal's temp file, in a stock folder: the
    --remove that follows writes nothing, and must still delete it (it did not: issue 18's flaky interrupt loop)."""
    folder = config_only_pipeline_dir
    stock = snapshot(folder)
    leftover = folder / "..qcompile-patch-journal.json.qcompile-tmp-4242.5oh9329z.tmp"
    leftover.write_bytes(b"")
    with pytest.raises(PatchError, match="nothing to remove"):
        remove_patch(folder)
    assert snapshot(folder) == stock


def test_a_hostile_journal_is_refused_not_followed(config_only_pipeline_dir, tiny_plan_path):
    folder = config_only_pipeline_dir
    (folder / ".qcompile-patch-journal.json").write_text(json.dumps({
        "qcompile_patch_journal": 1, "operation": "patch", "commit": 0,
        "ops": [{"path": "../outside/config.json", "before": None, "after": "{}", "mode": 420}]}))
    before = snapshot(folder)
    with pytest.raises(PatchError, match="not a qcompile patch journal of format 1"):
        patch_pipeline_dir(folder, tiny_plan_path)
    assert snapshot(folder) == before and not (folder.parent / "outside").exists()


def test_a_second_patch_at_the_same_time_is_refused(config_only_pipeline_dir, tiny_plan_path):
    fcntl = pytest.importorskip("fcntl")
    fd = os.open(config_only_pipeline_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(PatchError, match="another `qcompile patch` is changing"):
            patch_pipeline_dir(config_only_pipeline_dir, tiny_plan_path)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["model_index.json", "transformer_2/config.json"])
@pytest.mark.parametrize("hostile", ["deep", "long number"])
def test_hostile_json_is_a_located_error(config_only_pipeline_dir, tiny_plan_path, name, hostile):
    path = config_only_pipeline_dir / name
    if hostile == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
        expected = rf"{path}:1:65: nested more than 64 levels deep"
    else:
        text = path.read_text()
        path.write_text(text.replace('"_class_name"', '"x": ' + "9" * 100_000 + ', "_class_name"', 1))
        expected = rf"{path}:2:\d+: number with 100000 digits"
    before = snapshot(config_only_pipeline_dir)
    with pytest.raises(PatchError, match=expected):
        patch_pipeline_dir(config_only_pipeline_dir, tiny_plan_path)
    with pytest.raises(PatchError, match=expected if name != "model_index.json" else "carries no qcompile plan"):
        remove_patch(config_only_pipeline_dir)  # --remove reads only the components' configs
    assert snapshot(config_only_pipeline_dir) == before


def test_cli_hostile_config_and_unwritable_file_are_errors_not_tracebacks(config_only_pipeline_dir, tiny_plan_path):
    from click.testing import CliRunner

    from qcompiler.cli.main import cli

    (config_only_pipeline_dir / "transformer" / "config.json").write_text("{" * 50_000)
    result = CliRunner().invoke(cli, ["patch", str(config_only_pipeline_dir), str(tiny_plan_path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "transformer/config.json:1:65: nested more than 64 levels deep" in result.output
    assert "Traceback" not in result.output
