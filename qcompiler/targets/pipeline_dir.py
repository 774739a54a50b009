"""Embed a plan in a saved diffusers pipeline folder ("patched config"), and take it out again.

The plan goes into each transformer component's `config.json` under the private key `_qcompile_plan`.
Why there: diffusers keeps `_`-prefixed keys of a model config as hidden config entries, so the plan is readable
as `pipe.transformer.config["_qcompile_plan"]` after `from_pretrained` and is written back by `save_pretrained`
(verified on a tiny Wan pipeline in tests/export/test_patch_pipeline.py). Why not `quantization_config`: diffusers
reserves it for weight quantizers and refuses to load an unknown `quant_method`. Keys added to
`model_index.json` and extra files in the folder are dropped by a re-save, so neither is used.

Every write is atomic (temp file in the same folder + os.replace, file mode kept) and the original bytes are kept
next to the config as `config.json.qcompile-backup`, so `remove_patch` restores the folder byte for byte.
Pure JSON editing: never imports torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcompiler.errors import PlanError, QcompileError
from qcompiler.plan.format import Plan, load_plan
from qcompiler.plan.io import write_bytes_atomically

PLAN_KEY = "_qcompile_plan"
CONFIG_NAME = "config.json"
BACKUP_SUFFIX = ".qcompile-backup"
MODEL_INDEX = "model_index.json"

# config.json key -> plan component key: what the plan's tables and kernels depend on.
_STRUCTURE_KEYS = (("num_layers", "num_layers"), ("num_attention_heads", "num_heads"), ("attention_head_dim", "head_dim"))


class PatchError(QcompileError):
    """A pipeline folder cannot be patched or unpatched as asked; the message says why and how to fix it."""


@dataclass(frozen=True)
class PatchResult:
    pipeline_dir: Path
    plan_sha256: str
    patched: tuple[str, ...]  # components written now
    already: tuple[str, ...]  # components that already carried this very plan


@dataclass(frozen=True)
class RemoveResult:
    pipeline_dir: Path
    restored: tuple[str, ...]  # config.json put back byte for byte from the backup
    key_removed: tuple[str, ...]  # no usable backup (re-saved or edited since patching): only the key was taken out


def embedded_plan_from_config(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The plan dict `qcompile patch` embedded in one model config (e.g. `pipe.transformer.config`), or None.

    Unverified: pass the result to `qcompiler.plan.format.load_plan`, which checks schema and content hash.
    """
    value = config.get(PLAN_KEY)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise PlanError(
            f"config key {PLAN_KEY} holds a {type(value).__name__}, not a plan object; "
            "re-embed the plan with: qcompile patch PIPELINE_DIR plan.json"
        )
    # A plain deep copy: diffusers hands out FrozenDicts, and callers must not alias the model's config.
    return json.loads(json.dumps(value))


def embedded_plan_from_configs(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """The plan embedded in a pipeline's transformer configs (component name -> config), or None if none has one.

    Refuses a half-patched pipeline or components carrying different plans: the runtime must not guess.
    """
    found = {name: embedded_plan_from_config(config) for name, config in configs.items()}
    hashes = {name: (plan or {}).get("content_sha256") for name, plan in found.items()}
    if not any(plan is not None for plan in found.values()):
        return None
    if len(set(hashes.values())) != 1:
        listing = ", ".join(f"{name}: {str(h)[:12] if h else 'none'}" for name, h in sorted(hashes.items()))
        raise PlanError(
            f"the pipeline's transformers carry different embedded plans ({listing}); re-patch the saved folder "
            "with one plan: qcompile patch PIPELINE_DIR --remove, then qcompile patch PIPELINE_DIR plan.json"
        )
    return next(iter(found.values()))


def patch_pipeline_dir(pipeline_dir: str | os.PathLike[str], plan: str | os.PathLike[str] | Plan) -> PatchResult:
    """Embed `plan` in every transformer config of the saved pipeline at `pipeline_dir`.

    Checks everything before writing anything; re-patching with the same plan is a no-op.
    """
    folder = _pipeline_folder(pipeline_dir)
    loaded = load_plan(plan)
    configs = {name: _read_config(folder, name) for name in _transformer_components(folder, loaded)}
    _check_structure(folder, loaded, configs)
    already: list[str] = []
    todo: list[str] = []
    for name, (_, config) in configs.items():
        embedded = embedded_plan_from_config(config)
        backup = _backup_path(folder, name)
        if embedded is not None:
            if embedded.get("content_sha256") != loaded.content_hash:
                raise PatchError(
                    f"{folder / name / CONFIG_NAME} already carries qcompile plan "
                    f"{str(embedded.get('content_sha256'))[:12]}, not {loaded.content_hash[:12]}. "
                    f"Remove it first: qcompile patch {folder} --remove"
                )
            already.append(name)
        elif backup.exists():
            raise PatchError(
                f"{backup} exists but {folder / name / CONFIG_NAME} carries no plan: config.json was replaced "
                "after an earlier patch. Delete the backup if the current config.json is the one to keep "
                "(or move the backup over config.json to get the original back), then patch again"
            )
        else:
            todo.append(name)
    written: list[str] = []
    try:
        for name in todo:
            raw, config = configs[name]
            config_path = folder / name / CONFIG_NAME
            _replace_bytes(_backup_path(folder, name), raw, mode_of=config_path)
            _replace_bytes(config_path, _config_bytes({**config, PLAN_KEY: loaded.to_dict()}), mode_of=config_path)
            written.append(name)
    except OSError as exc:
        # Leave no half-patched pipeline behind. No `todo` component had a backup before, so every backup
        # there now is ours and holds the original bytes.
        for name in todo:
            backup = _backup_path(folder, name)
            if backup.exists():
                _replace_bytes(folder / name / CONFIG_NAME, backup.read_bytes(), mode_of=folder / name / CONFIG_NAME)
                backup.unlink()
        raise PatchError(f"could not patch {folder}: {exc}; the folder was left as it was") from None
    return PatchResult(folder, loaded.content_hash, tuple(written), tuple(already))


def remove_patch(pipeline_dir: str | os.PathLike[str]) -> RemoveResult:
    """Undo `patch_pipeline_dir`: restore each patched config.json from its backup (byte-identical).

    A config.json changed since patching (or a re-saved copy with no backup) keeps its other changes and loses
    only the `_qcompile_plan` key.
    """
    folder = _pipeline_folder(pipeline_dir)
    restored: list[str] = []
    key_removed: list[str] = []
    planned: list[tuple[str, bytes, dict[str, Any], bytes | None]] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        config_path, backup = sub / CONFIG_NAME, sub / (CONFIG_NAME + BACKUP_SUFFIX)
        if not config_path.is_file():
            continue
        raw, config = _read_config(folder, sub.name)
        has_key = PLAN_KEY in config
        if backup.exists() and not has_key:
            raise PatchError(
                f"{backup} exists but {config_path} carries no plan: config.json was replaced after patching. "
                "Move the backup over config.json to get the original back, or delete it to keep the current one"
            )
        if has_key:
            planned.append((sub.name, raw, config, backup.read_bytes() if backup.exists() else None))
    if not planned:
        raise PatchError(f"{folder} carries no qcompile plan (no {CONFIG_NAME} has {PLAN_KEY}); nothing to remove")
    for name, _, config, original in planned:
        config_path = folder / name / CONFIG_NAME
        without_key = {k: v for k, v in config.items() if k != PLAN_KEY}
        if original is not None and _parses_to(original, without_key):
            _replace_bytes(config_path, original, mode_of=config_path)
            restored.append(name)
        else:
            _replace_bytes(config_path, _config_bytes(without_key), mode_of=config_path)
            key_removed.append(name)
        _backup_path(folder, name).unlink(missing_ok=True)
    return RemoveResult(folder, tuple(restored), tuple(key_removed))


# -- checks -------------------------------------------------------------------------------------------


def _pipeline_folder(pipeline_dir: str | os.PathLike[str]) -> Path:
    folder = Path(pipeline_dir)
    if not folder.is_dir():
        raise PatchError(f"{folder}: not a folder; give the folder a pipeline was saved to (pipe.save_pretrained)")
    if not (folder / MODEL_INDEX).is_file():
        raise PatchError(
            f"{folder} has no {MODEL_INDEX}: not a saved diffusers pipeline. Give the folder that holds "
            f"{MODEL_INDEX} (the one passed to save_pretrained), not a component subfolder"
        )
    return folder


def _transformer_components(folder: Path, plan: Plan) -> tuple[str, ...]:
    """The plan's components, after checking model_index.json lists exactly those transformers."""
    index = _read_json(folder / MODEL_INDEX)
    problems = []
    pipeline_class = index.get("_class_name")
    if pipeline_class != plan.family.pipeline_class:
        problems.append(f"pipeline class is {pipeline_class}, the plan's family uses {plan.family.pipeline_class}")
    classes = {c.diffusers_class for c in plan.family.components}
    # An absent optional component is saved as [null, null]; only present ones count.
    present = sorted(
        name for name, value in index.items()
        if isinstance(value, list) and len(value) == 2 and value[1] in classes
    )
    wanted = sorted(plan.component_names)
    if present != wanted:
        problems.append(f"transformer components are {present or 'none'}, the plan has {wanted}")
    if problems:
        raise PatchError(_mismatch_message(folder, plan, problems))
    return plan.component_names


def _check_structure(folder: Path, plan: Plan, configs: Mapping[str, tuple[bytes, dict[str, Any]]]) -> None:
    problems = []
    for spec in plan.family.components:
        # diffusers configs name one block count (`num_layers`): compared where the component has one list
        component = {"name": spec.name, "diffusers_class": spec.diffusers_class, "num_heads": spec.num_heads,
                     "head_dim": spec.head_dim,
                     "num_layers": spec.block_lists[0].length if len(spec.block_lists) == 1 else None}
        _, config = configs[component["name"]]
        if config.get("_class_name") != component["diffusers_class"]:
            problems.append(
                f"{component['name']}: class {config.get('_class_name')}, the plan expects {component['diffusers_class']}"
            )
        for config_key, plan_key in _STRUCTURE_KEYS:
            if component[plan_key] is not None and config.get(config_key) != component[plan_key]:
                problems.append(
                    f"{component['name']}: {config_key} is {config.get(config_key)}, the plan expects {component[plan_key]}"
                )
    if problems:
        raise PatchError(_mismatch_message(folder, plan, problems))


def _mismatch_message(folder: Path, plan: Plan, problems: list[str]) -> str:
    family = plan.family_name if plan.variant is None else f"{plan.family_name} --variant {plan.variant}"
    return (
        f"plan {plan.content_hash[:12]} was compiled for {family}, which does not match the pipeline in {folder}:\n"
        + "\n".join(f"  {p}" for p in problems)
        + "\nCompile the recipe for this model's family (qcompile families lists them; tiny test pipelines need "
        "--variant tiny) and patch with that plan"
    )


# -- files --------------------------------------------------------------------------------------------


def _backup_path(folder: Path, component: str) -> Path:
    return folder / component / (CONFIG_NAME + BACKUP_SUFFIX)


def _read_config(folder: Path, component: str) -> tuple[bytes, dict[str, Any]]:
    path = folder / component / CONFIG_NAME
    if not path.is_file():
        raise PatchError(f"{path} is missing: the pipeline in {folder} has no saved {component}")
    raw = path.read_bytes()
    return raw, _parse(raw, path)


def _read_json(path: Path) -> dict[str, Any]:
    return _parse(path.read_bytes(), path)


def _parse(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PatchError(f"{path}: not valid JSON ({exc}); re-save the pipeline with save_pretrained") from None
    if not isinstance(data, dict):
        raise PatchError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _parses_to(raw: bytes, expected: Mapping[str, Any]) -> bool:
    try:
        return json.loads(raw.decode("utf-8")) == expected
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _config_bytes(config: Mapping[str, Any]) -> bytes:
    # The layout diffusers' save_pretrained writes, so a patched file diffs cleanly against a re-saved one.
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _replace_bytes(path: Path, data: bytes, *, mode_of: Path) -> None:
    """Atomic write that keeps `mode_of`'s permissions."""
    mode = mode_of.stat().st_mode & 0o7777 if mode_of.exists() else None
    write_bytes_atomically(path, data, mode=mode)
