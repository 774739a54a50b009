"""The five new families' tiny offline pipelines (runtime/models/tiny_*.py) against their format-2 family data
(qcompiler/families/data/) and diffusers 0.42.1's real attention call paths.

The attention calls are observed independently of qcompile's runtime (tiny_family_observer: hooks on the attention
modules, a wrapped `dispatch_attention_fn` and `F.scaled_dot_product_attention`); the per-forward counts asserted
here are what the runtime's plan-following tests rely on.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.runtime.models.tiny_family_observer import observe

DATA = Path(__file__).resolve().parents[3] / "qcompiler" / "families" / "data"

# family file -> (tiny module, build kwargs)
FAMILIES = {
    "flux1_dev": ("tiny_flux", {"variant": "dev"}),
    "flux1_schnell": ("tiny_flux", {"variant": "schnell"}),
    "cogvideox_2b": ("tiny_cogvideox", {"variant": "2b"}),
    "cogvideox_5b": ("tiny_cogvideox", {"variant": "5b"}),
    "ltx_video": ("tiny_ltx", {}),
    "qwen_image": ("tiny_qwenimage", {}),
    "hunyuanvideo15_t2v_480p": ("tiny_hunyuanvideo15", {}),
    "hunyuanvideo_t2v_720p": ("tiny_hunyuanvideo", {}),
    "skyreels_v2_t2v_14b_540p": ("tiny_skyreels_v2", {}),
    "skyreels_v2_df_14b_540p": ("tiny_skyreels_v2", {"diffusion_forcing": True}),
}

# Observed per forward: (block list path, attention module, how attention is reached, mask passed) -> calls.
EXPECTED_CALLS = {
    "flux1_dev": {("transformer_blocks", "attn", "dispatch", False): 19,
                  ("single_transformer_blocks", "attn", "dispatch", False): 38},
    "flux1_schnell": {("transformer_blocks", "attn", "dispatch", False): 19,
                      ("single_transformer_blocks", "attn", "dispatch", False): 38},
    "cogvideox_2b": {("transformer_blocks", "attn1", "sdpa", False): 30},
    "cogvideox_5b": {("transformer_blocks", "attn1", "sdpa", False): 42},
    "ltx_video": {("transformer_blocks", "attn1", "dispatch", False): 28,
                  ("transformer_blocks", "attn2", "dispatch", True): 28},
    "qwen_image": {("transformer_blocks", "attn", "dispatch", False): 60},
    "hunyuanvideo15_t2v_480p": {("context_embedder.token_refiner.refiner_blocks", "attn", "sdpa", True): 2,
                                ("transformer_blocks", "attn", "dispatch", True): 54},
    "hunyuanvideo_t2v_720p": {("context_embedder.token_refiner.refiner_blocks", "attn", "sdpa", True): 2,
                              ("transformer_blocks", "attn", "dispatch", True): 20,
                              ("single_transformer_blocks", "attn", "dispatch", True): 40},
    "skyreels_v2_t2v_14b_540p": {("blocks", "attn1", "dispatch", False): 40, ("blocks", "attn2", "dispatch", False): 40},
    "skyreels_v2_df_14b_540p": {("blocks", "attn1", "dispatch", False): 40, ("blocks", "attn2", "dispatch", False): 40},
}
# Transformer forwards per denoising step and the batch of each attention call (batched CFG: 2 in one forward).
FORWARDS_PER_STEP = {"flux1_dev": 1, "flux1_schnell": 1, "cogvideox_2b": 1, "cogvideox_5b": 1, "ltx_video": 1,
                     "qwen_image": 2, "hunyuanvideo15_t2v_480p": 2, "hunyuanvideo_t2v_720p": 1,
                     "skyreels_v2_t2v_14b_540p": 2, "skyreels_v2_df_14b_540p": 2}
CALL_BATCH = {"flux1_dev": 1, "flux1_schnell": 1, "cogvideox_2b": 2, "cogvideox_5b": 2, "ltx_video": 2,
              "qwen_image": 1, "hunyuanvideo15_t2v_480p": 1, "hunyuanvideo_t2v_720p": 1,
              "skyreels_v2_t2v_14b_540p": 1, "skyreels_v2_df_14b_540p": 1}
# Pipelines on the slow side of 2 s per build + two 2-step calls with one thread.
SLOW = {"qwen_image", "hunyuanvideo15_t2v_480p", "hunyuanvideo_t2v_720p", "ltx_video"}
STEPS = 2


def _family(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def _params(slow=frozenset(SLOW)):
    return [pytest.param(n, marks=[pytest.mark.slow] if n in slow else [], id=n) for n in FAMILIES]


def _build(name: str, seed: int = 0):
    module_name, kwargs = FAMILIES[name]
    module = importlib.import_module(f"runtime.models.{module_name}")
    return module, module.build_tiny_pipeline(seed, **kwargs)


def _run(module, pipe, seed: int = 0, **extra) -> torch.Tensor:
    with torch.no_grad():
        out = pipe(**module.tiny_inputs(pipe, num_inference_steps=STEPS, seed=seed, **extra))
    return out[0]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


# Three calls and two builds each: only the cheapest family stays in the default run.
@pytest.mark.parametrize("name", _params(slow=set(FAMILIES) - {"cogvideox_2b"}))
def test_tiny_pipeline_builds_offline_runs_and_is_deterministic(name):
    module, pipe = _build(name, seed=0)
    first = _run(module, pipe, seed=0)
    assert torch.isfinite(first).all()
    assert torch.equal(first, _run(module, pipe, seed=0))
    assert not torch.equal(first, _run(module, pipe, seed=1))
    # Same seed, fresh build: the same random weights.
    _, again = _build(name, seed=0)
    for (key, a), b in zip(pipe.transformer.state_dict().items(), again.transformer.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("name", _params())
def test_tiny_pipeline_matches_family_data_and_observed_attention_calls(name):
    family = _family(name)
    module, pipe = _build(name)
    transformer = pipe.transformer
    component = family["components"][0]
    tiny = family["variants"]["tiny"]
    heads, head_dim = tiny["components"][0]["num_heads"], tiny["components"][0]["head_dim"]
    assert type(transformer).__name__ == component["diffusers_class"]
    assert type(pipe).__name__ == family["pipeline_class"]
    assert type(pipe.scheduler).__name__ == tiny["scheduler"]["class"]

    # Every block list has its real length; every (kind, layer) module exists with the tiny heads.
    lists = {b["name"]: b for b in component["block_lists"]}
    for block_list in lists.values():
        assert len(transformer.get_submodule(block_list["path"])) == block_list["length"], block_list
    for kind in family["attention_kinds"].values():
        block_list = lists[kind["block_list"]]
        for layer in range(block_list["length"]):
            attn = transformer.get_submodule(f"{block_list['path']}.{layer}.{kind['module']}")
            assert attn.heads == heads

    with observe(transformer) as obs:
        _run(module, pipe)
    assert len(obs.forwards) == STEPS * FORWARDS_PER_STEP[name]
    expected = Counter(EXPECTED_CALLS[name])
    tokens = tiny["reference_shapes"]["tokens"]
    for index in range(len(obs.forwards)):
        assert obs.per_forward(index) == expected, index
    for call in obs.forwards[0]:
        assert (call.heads, call.head_dim, call.batch) == (heads, head_dim, CALL_BATCH[name])
        # The kind that lives at this module, and its call shape at the tiny reference shapes.
        (kind,) = [k for k in family["attention_kinds"].values()
                   if lists[k["block_list"]]["path"] == call.block_list and k["module"] == call.kind_module]
        assert call.q_len == sum(tokens[r] for r in kind["query_tokens"])
        assert call.kv_len == sum(tokens[r] for r in kind["key_tokens"])
    # Each attention module is called exactly once per forward.
    modules = [c.module for c in obs.forwards[0]]
    assert len(modules) == len(set(modules))


@pytest.mark.slow
def test_qwen_image_passes_a_joint_mask_only_for_unequal_prompts_in_one_batch():
    module, pipe = _build("qwen_image")
    with observe(pipe.transformer) as obs:
        _run(module, pipe, prompt=["a red cube", "a tall red cube on a table"], negative_prompt=["blurry", "x"])
    assert obs.per_forward(0) == Counter({("transformer_blocks", "attn", "dispatch", True): 60})


@pytest.mark.slow
def test_mask_forms_of_ltx_and_hunyuanvideo15():
    """LTX-Video's cross mask: additive float bias (B, H, 1, Skv), on every call. HunyuanVideo-1.5: boolean
    (B, 1, S, S) on every joint call and (B, H, S, S) on every refiner call (AttnProcessor2_0 repeats it per head), with fully masked query rows (the padded text-side tokens)."""
    module, pipe = _build("ltx_video")
    with observe(pipe.transformer) as obs:
        _run(module, pipe)
    cross = [c for c in obs.forwards[0] if c.kind_module == "attn2"]
    assert {(c.mask_dtype, c.mask_shape) for c in cross} == {("float32", (2, 2, 1, 16))}

    module, pipe = _build("hunyuanvideo15_t2v_480p")
    with observe(pipe.transformer) as obs:
        _run(module, pipe)
    joint = [c for c in obs.forwards[0] if c.block_list == "transformer_blocks"]
    refiner = [c for c in obs.forwards[0] if c.block_list != "transformer_blocks"]
    assert {(c.mask_dtype, c.mask_shape) for c in joint} == {("bool", (1, 1, 92, 92))}
    assert {(c.mask_dtype, c.mask_shape) for c in refiner} == {("bool", (1, 2, 32, 32))}  # per head
    # Text-to-video: the 4 image tokens are all padding, and so are the padded ByT5 and Qwen tokens; the
    # refiner's padded Qwen rows too (per head).
    assert all(c.fully_masked_rows > 4 for c in joint) and all(c.fully_masked_rows > 0 for c in refiner)


def test_flux_true_cfg_runs_a_second_forward_per_step():
    module, pipe = _build("flux1_dev")
    with observe(pipe.transformer) as obs:
        _run(module, pipe, negative_prompt="blurry", true_cfg_scale=2.0)
    assert len(obs.forwards) == 2 * STEPS


def test_cogvideox_5b_dpm_step_is_seeded_only_through_its_own_signature():
    """The pipeline passes `generator` to `scheduler.step` only if the signature names it: a plain `*args`
    wrapper makes the 5B's DPM step (eta=1) draw unseeded noise; a `functools.wraps` wrapper keeps it seeded."""
    module, pipe = _build("cogvideox_5b")
    stock = _run(module, pipe)
    step = pipe.scheduler.step
    pipe.scheduler.step = lambda *args, **kwargs: step(*args, **kwargs)
    assert not torch.equal(_run(module, pipe), _run(module, pipe))
    pipe.scheduler.step = functools.wraps(step)(lambda *args, **kwargs: step(*args, **kwargs))
    assert torch.equal(_run(module, pipe), stock)


def test_scheduler_step_signatures_and_step_callbacks():
    """What a wrapper of `scheduler.step` / the step loop must preserve or cannot rely on."""
    from diffusers import (
        CogVideoXDDIMScheduler,
        CogVideoXDPMScheduler,
        CogVideoXPipeline,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
    )

    for scheduler in (CogVideoXDDIMScheduler, CogVideoXDPMScheduler):
        params = inspect.signature(scheduler.step).parameters
        assert {"generator", "eta"} <= set(params)
    assert "eta" not in inspect.signature(FlowMatchEulerDiscreteScheduler.step).parameters
    assert "callback_on_step_end" not in inspect.signature(HunyuanVideo15Pipeline.__call__).parameters
    assert "callback_on_step_end" in inspect.signature(CogVideoXPipeline.__call__).parameters


def test_context_parallel_plans_exist_only_for_flux_qwen_image_and_ltx():
    from diffusers import (
        CogVideoXTransformer3DModel,
        FluxTransformer2DModel,
        HunyuanVideo15Transformer3DModel,
        LTXVideoTransformer3DModel,
        QwenImageTransformer2DModel,
    )

    has_plan = {cls.__name__: getattr(cls, "_cp_plan", None) is not None for cls in (
        CogVideoXTransformer3DModel, FluxTransformer2DModel, HunyuanVideo15Transformer3DModel,
        LTXVideoTransformer3DModel, QwenImageTransformer2DModel)}
    assert has_plan == {"CogVideoXTransformer3DModel": False, "FluxTransformer2DModel": True,
                        "HunyuanVideo15Transformer3DModel": False, "LTXVideoTransformer3DModel": True,
                        "QwenImageTransformer2DModel": True}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_data_is_self_consistent(name):
    family = _family(name)
    assert family["family_format"] == 2 and family["boundary_ratio"] is None
    assert "diffusers 0.42.1" in family["source"]
    names = {c["name"] for c in family["components"]}
    assert names == {"transformer"}
    tiny = family["variants"]["tiny"]
    assert tiny["components"] == [{"name": "transformer", "num_heads": 2, "head_dim": 64}]
    for component in family["components"]:
        lists = {b["name"] for b in component["block_lists"]}
        for kind in family["attention_kinds"].values():
            assert kind["block_list"] in lists
    for shapes in (family["reference_shapes"], tiny["reference_shapes"]):
        for kind in family["attention_kinds"].values():
            assert set(kind["query_tokens"]) | set(kind["key_tokens"]) <= set(shapes["tokens"])
