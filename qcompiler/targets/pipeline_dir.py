"""Embed a plan in a saved diffusers pipeline folder ("patched config"), and take it out again.

The plan goes into each transformer component's `config.json` under the private key `_qcompile_plan`.
Why there: diffusers keeps `_`-prefixed keys of a model config as hidden config entries, so the plan is readable
as `pipe.transformer.config["_qcompile_plan"]` after `from_pretrained` and is written back by `save_pretrained`
(verified on a tiny Wan pipeline in tests/export/test_patch_pipeline.py). Why not `quantization_config`: diffusers
reserves it for weight quantizers and refuses to load an unknown `quant_method`. Keys added to
`model_index.json` and extra files in the folder are dropped by a re-save, so neither is used.

All or nothing across the folder's files, whatever interrupts it (SIGKILL included):
- the commit point is one file, the config of the first transformer by name (`transformer/`): a patch writes it
  last, a removal first, and a reader (`embedded_plan_from_configs`) takes a pipeline whose first transformer
  carries no plan as not patched, so every state a killed run can leave loads as before or fully patched;
- before changing anything, a journal (`.qcompile-patch-journal.json` in the folder) is written atomically with
  every file's bytes before and after; each file is then replaced atomically (temp file + os.replace, mode
  kept); the journal is deleted last. The next `patch` or `patch --remove` finds a leftover journal and
  completes the change if its commit point was written, else puts every file back; an exception in the
  running process (OSError, KeyboardInterrupt, the CLI's SIGTERM) puts every file back at once;
- every file and folder to be written is probed before the journal is written, so an unwritable one (read-only,
  immutable, a read-only folder) is refused with nothing changed.
The original bytes are kept next to each config as `config.json.qcompile-backup`, so `remove_patch` restores
the folder byte for byte. Pure JSON editing: never imports torch.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcompiler.errors import PlanError, QcompileError
from qcompiler.fileio import TEMP_MARKER, InputRefused, parse_json, read_regular_file, write_bytes_atomically
from qcompiler.plan.format import MAX_PLAN_BYTES, Plan, load_plan

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs on one folder are then the user's to avoid
    fcntl = None  # type: ignore[assignment]

PLAN_KEY = "_qcompile_plan"
CONFIG_NAME = "config.json"
BACKUP_SUFFIX = ".qcompile-backup"
MODEL_INDEX = "model_index.json"
JOURNAL_NAME = ".qcompile-patch-journal.json"
JOURNAL_FORMAT = 1
# A transformer config is its model's settings (under a kilobyte) plus at most one embedded plan.
MAX_CONFIG_BYTES = MAX_PLAN_BYTES + 1024 * 1024

# config.json key -> plan component key: what the plan's tables and kernels depend on.
_STRUCTURE_KEYS = (("num_layers", "num_layers"), ("num_attention_heads", "num_heads"), ("attention_head_dim", "head_dim"))
# Temp files of write_bytes_atomically for the files we write (".NAME.qcompile-tmp-PID.xxxxxxxx.tmp", see
# qcompiler/fileio.py; ".NAME.xxxxxxxx.tmp" from qcompile versions before the pid was added) and of the
# writability probe, that a killed or interrupted run of ours can leave. Found only in the folders we write, and
# deleted only while holding the folder's lock, so whatever the pid, the writer is this process or a dead run.
# The next atomic write to the same file removes its own, but a run can write nothing at all (a --remove with
# nothing to remove, a patch that the recovery completed): so every run deletes them here.
_OUR_TEMP_FILE = re.compile(
    rf"\.(?:config\.json(?:\.qcompile-backup)?|\.qcompile-patch-journal\.json)\.(?:{TEMP_MARKER}-[0-9]{{1,10}}\.)?"
    r"[a-z0-9_]{8}\.tmp|\.qcompile-probe\.[a-z0-9_]{8}\.tmp"
)
_JOURNAL_PATH = re.compile(r"[^/\\]+/config\.json(?:\.qcompile-backup)?")


class PatchError(QcompileError):
    """A pipeline folder cannot be patched or unpatched as asked; the message says why and how to fix it."""


@dataclass(frozen=True)
class PatchResult:
    pipeline_dir: Path
    plan_sha256: str
    patched: tuple[str, ...]  # components written now
    already: tuple[str, ...]  # components that already carried this very plan
    recovered: str | None = None  # what was done with a change an interrupted earlier run left unfinished


@dataclass(frozen=True)
class RemoveResult:
    pipeline_dir: Path
    restored: tuple[str, ...]  # config.json put back byte for byte from the backup
    key_removed: tuple[str, ...]  # no usable backup (re-saved or edited since patching): only the key was taken out
    recovered: str | None = None  # what was done with a change an interrupted earlier run left unfinished
    stale_backups: tuple[str, ...] = ()  # leftover backups identical to their config (an interrupted older run)


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

    The first component by name is the commit point (`qcompile patch` writes it last, `--remove` first): when it
    carries no plan, the pipeline is not patched, whatever an interrupted patch or removal left in the others.
    Refuses components carrying different plans, or a plan in the first but not in all: the runtime must not guess.
    """
    found = {name: embedded_plan_from_config(config) for name, config in configs.items()}
    if not found or found[min(found)] is None:
        return None
    hashes = {name: (plan or {}).get("content_sha256") for name, plan in found.items()}
    if len(set(hashes.values())) != 1:
        listing = ", ".join(f"{name}: {str(h)[:12] if h else 'none'}" for name, h in sorted(hashes.items()))
        raise PlanError(
            f"the pipeline's transformers carry different embedded plans ({listing}); re-patch the saved folder "
            "with one plan: qcompile patch PIPELINE_DIR --remove, then qcompile patch PIPELINE_DIR plan.json"
        )
    return found[min(found)]


def patch_pipeline_dir(pipeline_dir: str | os.PathLike[str], plan: str | os.PathLike[str] | Plan) -> PatchResult:
    """Embed `plan` in every transformer config of the saved pipeline at `pipeline_dir`, all or nothing.

    Checks everything (plan, pipeline structure, that every file can be written) before writing anything;
    re-patching with the same plan is a no-op. Finishes or undoes a change an interrupted earlier run left.
    """
    folder = _pipeline_folder(pipeline_dir)
    loaded = load_plan(plan)
    with _locked(folder):
        recovered = _recover(folder)
        names = _transformer_components(folder, loaded)
        configs = {name: _read_config(folder, name) for name in names}
        _check_structure(folder, loaded, configs)
        already: list[str] = []
        ops: list[dict[str, Any]] = []
        primary = min(names)
        # The first transformer by name is the commit point: written last (embedded_plan_from_configs).
        for name in sorted(names, key=lambda n: n == primary):
            raw, config = configs[name]
            config_path = folder / name / CONFIG_NAME
            embedded = embedded_plan_from_config(config)
            if embedded is not None:
                if embedded.get("content_sha256") != loaded.content_hash:
                    raise PatchError(
                        f"{config_path} already carries qcompile plan "
                        f"{str(embedded.get('content_sha256'))[:12]}, not {loaded.content_hash[:12]}. "
                        f"Remove it first: qcompile patch {folder} --remove"
                    )
                already.append(name)
                continue
            backup = _backup_path(folder, name)
            old_backup = _read_backup(backup)
            if old_backup is not None and not _same_config(old_backup, config):
                raise PatchError(
                    f"{backup} exists but {config_path} carries no plan: config.json was replaced "
                    "after an earlier patch. Delete the backup if the current config.json is the one to keep "
                    "(or move the backup over config.json to get the original back), then patch again"
                )
            mode = _mode(config_path)
            if old_backup != raw:  # a leftover backup of this very config is simply refreshed
                ops.append(_op(folder, backup, old_backup, raw, mode))
            ops.append(_op(folder, config_path, raw, _config_bytes({**config, PLAN_KEY: loaded.to_dict()}), mode))
        if ops:
            _change(folder, "patch", ops, commit=len(ops) - 1)
    patched = tuple(name for name in names if name not in already)
    return PatchResult(folder, loaded.content_hash, patched, tuple(n for n in names if n in already), recovered)


def remove_patch(pipeline_dir: str | os.PathLike[str]) -> RemoveResult:
    """Undo `patch_pipeline_dir`, all or nothing: restore each patched config.json from its backup (byte-identical).

    A config.json changed since patching (or a re-saved copy with no backup) keeps its other changes and loses
    only the `_qcompile_plan` key. Finishes or undoes a change an interrupted earlier run left, and deletes
    leftover backups that are identical to their config.
    """
    folder = _pipeline_folder(pipeline_dir)
    with _locked(folder):
        recovered = _recover(folder)
        planned: list[tuple[str, bytes, dict[str, Any], bytes | None]] = []
        stale: list[tuple[str, bytes]] = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            config_path, backup = sub / CONFIG_NAME, _backup_path(folder, sub.name)
            if not config_path.is_file():
                continue
            raw, config = _read_config(folder, sub.name)
            original = _read_backup(backup)
            if PLAN_KEY in config:
                planned.append((sub.name, raw, config, original))
            elif original is not None:
                if not _same_config(original, config):
                    raise PatchError(
                        f"{backup} exists but {config_path} carries no plan: config.json was replaced after "
                        "patching. Move the backup over config.json to get the original back, or delete it to keep "
                        "the current one"
                    )
                stale.append((sub.name, original))
        if not planned and not stale and recovered is None:
            raise PatchError(
                f"{folder} carries no qcompile plan (no {CONFIG_NAME} has {PLAN_KEY}); nothing to remove"
            )
        restored: list[str] = []
        key_removed: list[str] = []
        ops: list[dict[str, Any]] = []
        # The first transformer by name is the commit point: written first (embedded_plan_from_configs).
        for name, raw, config, original in planned:
            config_path = folder / name / CONFIG_NAME
            without_key = {k: v for k, v in config.items() if k != PLAN_KEY}
            if original is not None and _parses_to(original, without_key):
                new, kind = original, restored
            else:
                new, kind = _config_bytes(without_key), key_removed
            ops.append(_op(folder, config_path, raw, new, _mode(config_path)))
            kind.append(name)
        for name, _, _, original in planned:
            if original is not None:
                ops.append(_op(folder, _backup_path(folder, name), original, None, _mode(_backup_path(folder, name))))
        for name, original in stale:
            ops.append(_op(folder, _backup_path(folder, name), original, None, _mode(_backup_path(folder, name))))
        if ops:
            _change(folder, "remove", ops, commit=0)
    return RemoveResult(folder, tuple(restored), tuple(key_removed), recovered, tuple(name for name, _ in stale))


# -- all or nothing: journal, probe, lock ------------------------------------------------------------------
# A journal op is one file's content before and after (None: the file does not exist) and the mode to write it
# with. Contents are kept as text: every file we write is a UTF-8 JSON file we parsed.


def _op(folder: Path, path: Path, before: bytes | None, after: bytes | None, mode: int | None) -> dict[str, Any]:
    return {
        "path": path.relative_to(folder).as_posix(),
        "before": None if before is None else before.decode("utf-8"),
        "after": None if after is None else after.decode("utf-8"),
        "mode": mode,
    }


def _change(folder: Path, operation: str, ops: list[dict[str, Any]], *, commit: int) -> None:
    """Apply `ops` in order under a journal; on any exception put every file back, then re-raise."""
    journal = folder / JOURNAL_NAME
    record = {"qcompile_patch_journal": JOURNAL_FORMAT, "operation": operation, "commit": commit, "ops": ops}
    journal_written = False
    try:
        _check_writable(folder, ops)
        write_bytes_atomically(journal, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
        journal_written = True
        for op in ops:
            _set(folder, op, "after")
        journal.unlink()
    except BaseException as exc:
        unfinished = journal.exists()  # a journal written and then gone: the change was complete
        if not isinstance(exc, Exception):
            exc.qcompile_undone = unfinished or not journal_written  # type: ignore[attr-defined]  # for the CLI
        try:
            if unfinished:  # an OSError, or an interrupt (KeyboardInterrupt, the CLI's SIGTERM): put files back
                _roll(folder, ops, forward=False, journal=journal)
                journal.unlink()
        except OSError as again:
            raise PatchError(
                f"could not {operation} {folder}: {_os_message(exc) if isinstance(exc, OSError) else exc!r}, "
                f"and putting the files back failed too: {_os_message(again)}. The folder still loads as it "
                f"did before; once that is fixed, `qcompile patch {folder} --remove` (or patching again) "
                f"finishes the job from {journal}"
            ) from None
        finally:
            _delete_temp_files(folder)  # an interrupt can land inside mkstemp, before its caller knows the name
        if isinstance(exc, OSError):
            raise PatchError(
                f"could not {operation} {folder}: {_os_message(exc)}; every file was put back as it was"
            ) from None
        raise


def _delete_temp_files(folder: Path) -> None:
    for sub in (folder, *(p for p in folder.iterdir() if p.is_dir())):
        for leftover in sub.iterdir():
            if _OUR_TEMP_FILE.fullmatch(leftover.name) and leftover.is_file():
                leftover.unlink(missing_ok=True)


def _recover(folder: Path) -> str | None:
    """Finish (commit point written) or undo (not written) the change a killed run left; say which, or None."""
    _delete_temp_files(folder)
    journal = folder / JOURNAL_NAME
    if not journal.exists():
        return None
    record = _read_journal(journal)
    ops = record["ops"]
    committed = _state(folder, ops[record["commit"]], journal) == "after"
    _roll(folder, ops, forward=committed, journal=journal)
    journal.unlink()
    command = "qcompile patch" + (" --remove" if record["operation"] == "remove" else "")
    done = "finished" if committed else "undone (every file put back)"
    return f"an interrupted earlier `{command}` was {done}"


def _roll(folder: Path, ops: list[dict[str, Any]], *, forward: bool, journal: Path) -> None:
    states = [_state(folder, op, journal) for op in ops]
    if forward:
        for op, state in zip(ops, states, strict=True):
            if state == "before":
                _set(folder, op, "after")
    else:
        for op, state in reversed(list(zip(ops, states, strict=True))):
            if state == "after":
                _set(folder, op, "before")


def _state(folder: Path, op: Mapping[str, Any], journal: Path) -> str:
    """"after" when the op's file holds its new content, "before" when it holds its old content."""
    path = folder / op["path"]
    try:
        current: str | None = read_regular_file(path, max_bytes=MAX_CONFIG_BYTES).decode("utf-8")
    except FileNotFoundError:
        current = None
    except (OSError, InputRefused, UnicodeDecodeError):
        current = "\0unreadable"
    if current == op["after"]:
        return "after"
    if current == op["before"]:
        return "before"
    raise PatchError(
        f"{path} holds neither its content from before nor from after the change recorded in {journal} (something "
        "else changed it since), so that change cannot be finished or undone safely. Check each transformer's "
        f"config.json by hand (a config.json.qcompile-backup beside it holds the original), then delete {journal}"
    )


def _set(folder: Path, op: Mapping[str, Any], which: str) -> None:
    path, content = folder / op["path"], op[which]
    if content is None:
        path.unlink(missing_ok=True)
    else:
        write_bytes_atomically(path, content.encode("utf-8"), mode=op["mode"])


def _read_journal(path: Path) -> dict[str, Any]:
    """The journal, checked: it names files to overwrite, so anything but our own format is refused."""
    try:
        record = parse_json(read_regular_file(path, max_bytes=4 * MAX_CONFIG_BYTES).decode("utf-8"))
    except (OSError, InputRefused, UnicodeDecodeError) as exc:
        reason = exc.located(str(path)) if isinstance(exc, InputRefused) else f"{path}: {exc}"
        raise PatchError(f"{reason}: not a readable qcompile patch journal; {_JOURNAL_HINT}") from None
    ops = record.get("ops") if isinstance(record, dict) else None
    valid = (
        isinstance(ops, list) and ops
        and record.get("qcompile_patch_journal") == JOURNAL_FORMAT
        and record.get("operation") in ("patch", "remove")
        and isinstance(record.get("commit"), int) and 0 <= record["commit"] < len(ops)
        and all(
            isinstance(op, dict) and isinstance(op.get("path"), str) and _JOURNAL_PATH.fullmatch(op["path"])
            and op["path"].split("/")[0] not in (".", "..")
            and all(op.get(k) is None or isinstance(op.get(k), str) for k in ("before", "after"))
            and (op.get("mode") is None or isinstance(op.get("mode"), int))
            for op in ops
        )
    )
    if not valid:
        raise PatchError(f"{path}: not a qcompile patch journal of format {JOURNAL_FORMAT}; {_JOURNAL_HINT}")
    return record


_JOURNAL_HINT = (
    "it is left by an interrupted `qcompile patch`. Check each transformer's config.json by hand (a "
    "config.json.qcompile-backup beside it holds the original), then delete the journal"
)


def _check_writable(folder: Path, ops: list[dict[str, Any]]) -> None:
    """Refuse, before anything changes, a file or folder the change would fail to write."""
    problems = []
    for directory in dict.fromkeys([folder, *((folder / op["path"]).parent for op in ops)]):
        try:
            fd, probe = tempfile.mkstemp(prefix=".qcompile-probe.", suffix=".tmp", dir=directory)
            try:
                os.close(fd)
            finally:
                os.unlink(probe)
        except OSError as exc:
            problems.append(f"  {directory}/: cannot create files there ({exc.strerror})")
    for op in ops:
        path = folder / op["path"]
        if op["before"] is None:
            continue
        try:  # opening for writing without truncating changes nothing, and fails as a write would
            os.close(os.open(path, os.O_WRONLY))
        except OSError as exc:
            problems.append(f"  {path}: cannot be written ({exc.strerror})")
    if problems:
        raise PatchError(
            f"nothing was changed in {folder}: these cannot be written\n" + "\n".join(problems)
            + "\nMake them writable (chmod u+w; chattr -i for an immutable file) and run the command again"
        )


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder itself (no lock file to leave behind), or refuse at once."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PatchError(
                f"another `qcompile patch` is changing {folder} right now; wait for it to finish and run this again"
            ) from None
        yield
    finally:
        os.close(fd)


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
    raw = _read_bytes(path)
    return raw, _parse(raw, path)


def _read_json(path: Path) -> dict[str, Any]:
    return _parse(_read_bytes(path), path)


def _read_backup(path: Path) -> bytes | None:
    return _read_bytes(path) if path.exists() else None


def _read_bytes(path: Path) -> bytes:
    try:
        return read_regular_file(path, max_bytes=MAX_CONFIG_BYTES)
    except InputRefused as exc:
        raise PatchError(f"{exc.located(str(path))}; re-save the pipeline with save_pretrained") from None
    except OSError as exc:
        raise PatchError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _parse(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        data = parse_json(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PatchError(f"{path}: byte {exc.start} is not valid UTF-8; re-save the pipeline with save_pretrained") from None
    except InputRefused as exc:
        raise PatchError(f"{exc.located(str(path))}; re-save the pipeline with save_pretrained") from None
    if not isinstance(data, dict):
        raise PatchError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _same_config(raw: bytes, config: Mapping[str, Any]) -> bool:
    """Whether a backup holds the same settings as a config carrying no plan (a leftover, safe to replace)."""
    return _parses_to(raw, config)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def _os_message(exc: OSError) -> str:
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)


def _parses_to(raw: bytes, expected: Mapping[str, Any]) -> bool:
    try:
        return parse_json(raw.decode("utf-8")) == expected
    except (UnicodeDecodeError, InputRefused):
        return False


def _config_bytes(config: Mapping[str, Any]) -> bytes:
    # The layout diffusers' save_pretrained writes, so a patched file diffs cleanly against a re-saved one.
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")
