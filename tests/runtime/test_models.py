"""Model support (runtime/models/): a family is a data file plus, for a new structure, one model module.

A made-up family with Wan's structure and its own name, block list name, kind names, token roles, layer count and
heads, from a file on $QCOMPILE_FAMILY_PATH alone, compiles and runs on a tiny pipeline the Wan module builds from
that data, cell for cell as planned.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import runtime
from qcompiler import compile_recipe_text
from qcompiler.cli.main import cli
from qcompiler.families import get_family
from qcompiler.plan.format import load_plan
from runtime.models import model_support, registered, support_for_family
from runtime.models.base import COND, UNCOND, ModelSupport, ModelSupportError
from runtime.tiny import build_tiny_pipeline, run_tiny, tiny_family
from tests.runtime.conftest import T2V, expected_rows

MADE_UP = "toyvid-3l"


def _made_up_family() -> dict:
    kind = {"block_list": "trunk", "query_tokens": ["latent"]}
    return {
        "family_format": 2,
        "name": MADE_UP,
        "description": "a made-up text-to-video family: Wan's structure, 3 blocks, its own names",
        "pipeline_class": "WanPipeline",
        "frames": {"multiple_of": 4, "plus": 1},
        "pixels": {"multiple_of": 16},
        "components": [{"name": "transformer", "role": "denoiser", "diffusers_class": "WanTransformer3DModel",
                        "num_heads": 12, "head_dim": 128,
                        "block_lists": [{"name": "trunk", "path": "blocks", "length": 3}]}],
        "attention_kinds": {
            "spatial": {**kind, "module": "attn1", "key_tokens": ["latent"]},
            "prompt": {**kind, "module": "attn2", "key_tokens": ["words"]},
        },
        "boundary_ratio": None,
        "num_train_timesteps": 1000,
        "scheduler": {"class": "UniPCMultistepScheduler", "flow_shift": 3.0},
        "reference_shapes": {"batch": 1, "cfg": True, "tokens": {"latent": 4096, "words": 512}},
        "variants": {"tiny": {"components": [{"name": "transformer", "num_heads": 3, "head_dim": 64}],
                              "reference_shapes": {"tokens": {"latent": 3, "words": 16}}}},
    }


@pytest.fixture
def made_up_family(tmp_path, monkeypatch) -> str:
    (tmp_path / "toyvid.json").write_text(json.dumps(_made_up_family()), encoding="utf-8")
    monkeypatch.setenv("QCOMPILE_FAMILY_PATH", str(tmp_path))
    return MADE_UP


MADE_UP_RECIPE = f"""\
version: 1
family: {MADE_UP}
num_inference_steps: 4
dtype: fp8_e4m3_per_block
fallback: error
attention_kinds: [spatial, prompt]
components: [transformer]
default: fp8
rules:
  - name: first-step
    steps: "0"
    precision: native
  - name: middle-block
    layers: "1"
    precision: native
  - name: prompt-late
    steps: "2-"
    attention_kinds: [prompt]
    precision: native
"""


def test_made_up_family_from_a_data_file_alone_runs_on_its_tiny_pipeline(made_up_family, tmp_path) -> None:
    # compiled by the command line, as a user would
    result = CliRunner().invoke(cli, ["compile", "--variant", "tiny", "-o", str(tmp_path / "plan.json"),
                                      _write(tmp_path / "toy.yaml", MADE_UP_RECIPE)])
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "plan.json")
    assert plan.content_hash == compile_recipe_text(MADE_UP_RECIPE, name="toy.yaml", variant="tiny").content_hash
    assert plan.family.num_layers("transformer", "spatial") == 3
    pipe = build_tiny_pipeline(made_up_family)
    assert (len(pipe.transformer.blocks), pipe.transformer.config.num_attention_heads) == (3, 3)
    with runtime.load(pipe, plan, backend="reference") as handle:
        run_tiny(pipe)
        report = handle.report()
    for kind in ("spatial", "prompt"):
        assert report.executed["transformer"][kind] == expected_rows(plan, "transformer", kind), kind
    assert report.executed["transformer"]["spatial"] == ["000", "101", "101", "101"]
    assert report.executed["transformer"]["prompt"] == ["000", "101", "000", "000"]
    assert report.matches_plan() and report.call_counts["reference"] == 2 * (3 * 2 + 2)


def _write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_made_up_family_frame_rule_is_its_data(made_up_family, tmp_path, monkeypatch) -> None:
    family = get_family(made_up_family)
    assert family.frame_size_problem(16, 16, 9) is None
    assert "toyvid-3l generates 4k+1 frames (e.g. 5, 9, 81)" in family.frame_size_problem(16, 16, 8)[1]
    # the same family with another rule: the commands that run a pipeline follow the file, nothing else
    other = tmp_path / "other"
    other.mkdir()
    data = _made_up_family()
    data["frames"] = {"multiple_of": 8, "plus": 0}
    (other / "toyvid.json").write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.setenv("QCOMPILE_FAMILY_PATH", str(other))
    recipe = _write(tmp_path / "toy.yaml", MADE_UP_RECIPE)
    result = CliRunner().invoke(cli, ["report", recipe, "--num-frames", "9", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "toyvid-3l generates 8k+0 frames" in result.output
    assert "--num-frames" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["calibrate", "--family", MADE_UP, "--steps", "4", "--num-frames", "9", "-o",
                                      str(tmp_path / "s.json")])
    assert result.exit_code == 2 and "8k+0" in result.output


def test_a_family_without_a_frame_rule_takes_any_size() -> None:
    family = get_family(T2V)
    assert family.frames_rule == (4, 1) and family.pixels_multiple_of == 16
    from dataclasses import replace

    free = replace(family, frames_rule=None, pixels_multiple_of=None)
    assert free.frame_size_problem(20, 24, 8) is None
    assert family.frame_size_problem(20, 16, 9)[0] == "height/width"


def test_registry_finds_the_wan_module_by_pipeline_model_and_family(t2v_pipe) -> None:
    from runtime.models.wan import WanSupport, build_tiny_video_to_video_pipeline

    assert type(model_support(t2v_pipe)) is WanSupport
    assert type(model_support(t2v_pipe.transformer)) is WanSupport
    assert type(support_for_family(tiny_family(T2V))) is WanSupport
    assert type(model_support(build_tiny_video_to_video_pipeline(T2V))) is WanSupport
    assert any(type(s) is WanSupport for s in registered())
    # anything else gets the defaults: dispatcher-called attention, cond then uncond forwards, no tiny builder
    default = model_support(object())
    assert type(default) is ModelSupport
    assert [default.branch(n) for n in (1, 2)] == [COND, UNCOND]
    with pytest.raises(ModelSupportError, match="no tiny builder"):
        default.build_tiny(tiny_family(T2V))


def test_tiny_builder_refuses_a_structure_the_wan_module_cannot_build(tmp_path, monkeypatch) -> None:
    data = _made_up_family()
    data["name"] = "toyvid-two-lists"
    data["components"][0]["block_lists"].append({"name": "extra", "path": "extra_blocks", "length": 2})
    (tmp_path / "two.json").write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.setenv("QCOMPILE_FAMILY_PATH", str(tmp_path))
    with pytest.raises(ModelSupportError, match="one block list"):
        build_tiny_pipeline("toyvid-two-lists")


@pytest.fixture
def scratch_registry():
    """Registrations made by a test are dropped after it."""
    import runtime.models as models

    registered()  # discover the shipped modules first, so they are part of the snapshot
    saved = dict(models._BY_CLASS), list(models._SUPPORTS)
    yield models.register
    models._BY_CLASS.clear()
    models._BY_CLASS.update(saved[0])
    models._SUPPORTS[:] = saved[1]


def test_the_step_tracker_takes_cfg_branches_from_the_model_module(scratch_registry, compile_tiny) -> None:
    from diffusers import WanPipeline

    from runtime.models.base import BATCHED
    from runtime.models.wan import WanSupport
    from tests.runtime.conftest import recipe

    class OneForwardPerStepPipeline(WanPipeline):
        pass

    @scratch_registry
    class OneForwardPerStep(WanSupport):
        name = "one-forward-per-step"
        model_classes = ()
        pipeline_classes = ("OneForwardPerStepPipeline",)
        same_transformer_pipelines = {}

        def branch(self, forward_in_step: int) -> str:
            return BATCHED

    base = build_tiny_pipeline(T2V)
    pipe = OneForwardPerStepPipeline(**base.components)
    pipe.set_progress_bar_config(disable=True)
    assert type(model_support(pipe)) is OneForwardPerStep
    plan = compile_tiny(recipe(T2V, default="native"))
    with runtime.shadow(pipe, plan=plan, num_inference_steps=4, backend="reference", kinds=["self"]) as rec:
        run_tiny(pipe, guidance_scale=5.0)
    assert rec.records and {r.branch for r in rec.records} == {BATCHED}
    with runtime.shadow(base, plan=plan, num_inference_steps=4, backend="reference", kinds=["self"]) as rec:
        run_tiny(base, guidance_scale=5.0)
    assert {r.branch for r in rec.records} == {COND, UNCOND}


def test_private_api_self_check_covers_every_registered_processor(scratch_registry) -> None:
    from runtime.diffusers_private import check_private_api

    assert check_private_api() == []

    class HandRolledProcessor:  # calls SDPA itself: no `_attention_backend`, no `_parallel_config`
        pass

    @scratch_registry
    class HandRolled(ModelSupport):
        name = "hand-rolled"
        model_classes = ("HandRolledTransformer",)

        def processor_classes(self) -> tuple[type, ...]:
            return (HandRolledProcessor,)

    assert check_private_api() == ["HandRolledProcessor has no class attribute _attention_backend",
                                   "HandRolledProcessor has no class attribute _parallel_config"]


def test_a_processor_no_entry_reaches_is_refused_at_install() -> None:
    """The entry is chosen per attention module by its processor (runtime/install.py): one that neither dispatches
    (no `_attention_backend`) nor is a known SDPA-calling class is refused, and nothing is left installed."""

    class HandRolledProcessor:  # calls attention its own way
        def __call__(self, attn, hidden_states, *args, **kwargs):
            raise AssertionError("never called: install refuses first")

    pipe = build_tiny_pipeline(T2V)
    blocks = pipe.transformer.blocks
    stock_backend = blocks[0].attn1.processor._attention_backend
    blocks[1].attn2.set_processor(HandRolledProcessor())
    with pytest.raises(runtime.PlanMismatchError, match=r"transformer\.blocks\.1\.attn2 \(cross attention\) has the "
                                                        r"attention processor HandRolledProcessor, which qcompile cannot "
                                                        r"reach"):
        runtime.shadow(pipe, num_inference_steps=4, backend="reference").__enter__()
    assert not hasattr(pipe, "_qcompile_runtime")  # nothing left installed
    assert blocks[0].attn1.processor._attention_backend is stock_backend
    assert not blocks[0].attn1._forward_pre_hooks
