"""Every vllm-omni name the plugin relies on that vllm-omni does not promise to keep, and the version check that
guards them. Read from the vllm-omni 0.30.0 wheel (paths inside it); see docs/vllm-omni-plugin.md.

Nothing here imports vllm-omni at module import: the entry point runs in every vllm-omni process, most of which
never build a model.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

# Versions whose gate code the tests execute (tests/integrations/test_vllm_omni_plugin.py downloads the wheel)
# and whose real attention layer the slow test ran. Any other version is refused unless ALLOW_UNTESTED_ENV is 1.
TESTED_VERSIONS = ("0.30.0",)
DISTRIBUTION = "vllm-omni"
ALLOW_UNTESTED_ENV = "QCOMPILE_VLLM_OMNI_ALLOW_UNTESTED"

# diffusion/attention/layer.py, class Attention: the per-call gate the plugin replaces on tagged instances, the
# per-layer opt-out Wan sets on cross-attention (it short-circuits the gate, so the plugin clears it), and what
# vllm-omni's own init validated from the serving flags.
GATE_METHOD = "_should_apply_kv_cache_quant"
PER_CALL_DTYPE_METHOD = "_with_kv_cache_dtype"  # calls GATE_METHOD once per attention call, after Ulysses' all-to-all
DISABLE_QUANT_ATTR = "_disable_kv_quant"
KV_CACHE_DTYPE_ATTR = "_kv_cache_dtype"  # "fp8", "mxfp8", "mxfp4", "float" or None, from --diffusion-kv-cache-dtype
SKIP_STEPS_ATTR = "_kv_cache_skip_steps"  # from --diffusion-kv-cache-skip-steps
SKIP_LAYERS_ATTR = "_kv_cache_skip_layers"  # from --diffusion-kv-cache-skip-layers
LAYER_INDEX_ATTR = "layer_idx"  # parsed from the prefix blocks.N.attn1|attn2
ROLE_ATTR = "role"  # "self" or "cross"
PREFIX_ATTR = "prefix"

# models/wan2_2/wan2_2_transformer.py: WanSelfAttention / WanCrossAttention hold vllm-omni's Attention as `.attn`;
# the transformer keeps its blocks in `.blocks` and a `config` with the diffusers field names.
ATTENTION_CHILD = "attn"
KIND_ROLES = {"self": "self", "cross": "cross"}  # plan attention kind -> Attention.role
MISSING_LAYER_CLASS = "PPMissingLayer"  # a block that lives on another pipeline-parallel stage

# models/wan2_2/pipeline_wan2_2.py: the pipeline lists its experts in `_dit_modules` and assigns them as
# `self.transformer` / `self.transformer_2`; the worker calls `pipeline.forward(batch)` directly (no nn.Module
# hooks fire), with batch.sampling_params_list[i].num_inference_steps (None means 40) and batch.is_dummy_run().
DIT_MODULES_ATTR = "_dit_modules"
DEFAULT_NUM_INFERENCE_STEPS = 40
DISTILLED_FLAG_ATTR = "is_dmd"  # DMD checkpoints ignore the request's step count
BOUNDARY_RATIO_ATTR = "boundary_ratio"
FLOW_SHIFT_ATTR = "_flow_shift"

# The Wan attention call path in 0.30.0: Attention.forward -> _forward_impl -> _with_kv_cache_dtype -> gate.
FORWARD_CONTEXT_MODULE = "vllm_omni.diffusion.forward_context"


def installed_version() -> str | None:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def version_problem(version: str | None) -> str | None:
    """Why the plugin must not run on this vllm-omni (None when `version` is a tested one)."""
    tested = ", ".join(TESTED_VERSIONS)
    if version is None:
        return (f"{DISTRIBUTION} is not installed in this Python environment, yet QCOMPILE_VLLM_OMNI_PLAN names a "
                f"plan: install a tested {DISTRIBUTION} ({tested}), or unset QCOMPILE_VLLM_OMNI_PLAN")
    if version in TESTED_VERSIONS:
        return None
    return (f"{DISTRIBUTION} {version} is not a version the qcompile plugin was tested with ({tested}): the "
            f"private names it replaces change between releases. Install {DISTRIBUTION}=={TESTED_VERSIONS[-1]}, "
            f"or check this version with QCOMPILE_VLLM_OMNI_TEST_VERSION={version} pytest "
            f"tests/integrations/test_vllm_omni_plugin.py and then set {ALLOW_UNTESTED_ENV}=1")


def untested_allowed() -> bool:
    return os.environ.get(ALLOW_UNTESTED_ENV) == "1"


def denoise_step() -> int | None:
    """The 0-based denoising step of the current call (ForwardContext.denoise_step_idx, written by the pipeline's
    record_denoise_step), or None outside a forward context."""
    import importlib

    context = importlib.import_module(FORWARD_CONTEXT_MODULE)
    if not context.is_forward_context_available():
        return None
    return context.get_forward_context().denoise_step_idx


def requested_steps(batch: Any) -> list[int]:
    """num_inference_steps of every request in a DiffusionRequestBatch, as the Wan pipeline resolves them."""
    return [DEFAULT_NUM_INFERENCE_STEPS if params.num_inference_steps is None else int(params.num_inference_steps)
            for params in batch.sampling_params_list]


def is_warmup(batch: Any) -> bool:
    """True for the engine's start-up dummy request (2 steps, request id dummy_req_id)."""
    flag = getattr(batch, "is_dummy_run", False)
    return bool(flag() if callable(flag) else flag)


def request_id(batch: Any) -> str:
    try:
        return str(batch.request_id)
    except (AttributeError, IndexError):
        return "?"
