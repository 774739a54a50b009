"""The embedded plan through diffusers itself: from_pretrained, save_pretrained, a second save, and runtime.load."""

from __future__ import annotations

import json
import logging

import pytest

from qcompiler.plan.format import load_plan
from qcompiler.targets.pipeline_dir import (
    BACKUP_SUFFIX,
    PLAN_KEY,
    embedded_plan_from_config,
    patch_pipeline_dir,
    remove_patch,
)

COMPONENTS = ("transformer", "transformer_2")

tiny = pytest.importorskip("runtime.tiny")


def test_embedded_plan_survives_from_pretrained_and_two_saves(pipeline_dir, tiny_plan_path, tmp_path):
    plan = load_plan(tiny_plan_path)
    patch_pipeline_dir(pipeline_dir, tiny_plan_path)
    pipe = tiny.load_tiny_pipeline(pipeline_dir)
    for component in COMPONENTS:
        # diffusers keeps `_`-prefixed config keys as hidden config entries: readable on the loaded model.
        assert embedded_plan_from_config(getattr(pipe, component).config) == plan.to_dict()
    first, second = tmp_path / "first", tmp_path / "second"
    pipe.save_pretrained(first)
    tiny.load_tiny_pipeline(first).save_pretrained(second)
    for folder in (first, second):
        assert not list(folder.rglob(f"*{BACKUP_SUFFIX}"))  # save_pretrained writes only what it owns
        for component in COMPONENTS:
            saved = json.loads((folder / component / "config.json").read_text())
            assert "quantization_config" not in saved
            assert load_plan(saved[PLAN_KEY]).content_hash == plan.content_hash
    reloaded = tiny.load_tiny_pipeline(second)
    assert embedded_plan_from_config(reloaded.transformer_2.config) == plan.to_dict()
    # A re-saved copy has no backup: --remove takes out only the key.
    assert remove_patch(second).key_removed == COMPONENTS
    assert PLAN_KEY not in json.loads((second / "transformer" / "config.json").read_text())


def test_runtime_load_without_a_plan_dispatches_as_the_embedded_plan_says(pipeline_dir, tiny_plan_path, caplog):
    import runtime

    plan = load_plan(tiny_plan_path)
    patch_pipeline_dir(pipeline_dir, tiny_plan_path)
    pipe = tiny.load_tiny_pipeline(pipeline_dir)
    with caplog.at_level(logging.INFO):
        handle = runtime.load(pipe, backend="reference")  # no plan: the embedded one (docs/design.md)
    assert "embedded" in caplog.text.lower(), "runtime.load must say it used the embedded plan"
    try:
        # No CFG: one forward per step halves the run; the plan is per step, the same for both CFG passes.
        tiny.run_tiny(pipe, num_inference_steps=plan.num_inference_steps, guidance_scale=1.0)
        report = handle.report()
    finally:
        handle.unload()
    assert report.matches_plan(), report.mismatches()
    for component in COMPONENTS:
        for kind in plan.attention_kinds:
            rows = plan.data["tables"][component][kind]
            expected = [
                row if plan.expert_schedule[step] == component else "." * len(row) for step, row in enumerate(rows)
            ]
            assert list(report.executed[component][kind]) == expected, (component, kind)
