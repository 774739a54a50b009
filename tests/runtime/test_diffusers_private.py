"""The private diffusers API qcompile relies on (runtime/diffusers_private.py) is where it expects it; after a
diffusers upgrade that moves any of it, this fails naming what moved."""

from __future__ import annotations

import diffusers

from runtime.diffusers_private import AttentionBackendName, check_private_api, register_attention_backend
from runtime.dispatch import QCOMPILE_BACKEND_VALUE, qcompile_attention, qcompile_backend


def test_private_diffusers_api_is_in_place():
    problems = check_private_api()
    assert not problems, (
        f"diffusers {diffusers.__version__} moved private API that runtime/diffusers_private.py relies on: "
        + "; ".join(problems) + ". Adapt runtime/diffusers_private.py (and only it) to the new diffusers."
    )


def test_qcompile_backend_is_a_context_parallel_capable_diffusers_backend():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    QCOMPILE_BACKEND = qcompile_backend()
    assert AttentionBackendName(QCOMPILE_BACKEND_VALUE) is QCOMPILE_BACKEND
    assert _AttentionBackendRegistry._is_context_parallel_available(QCOMPILE_BACKEND)
    assert _AttentionBackendRegistry._backends[QCOMPILE_BACKEND] is qcompile_attention
    # Registering again (a module reload) keeps the one member.
    assert register_attention_backend(QCOMPILE_BACKEND_VALUE, qcompile_attention,
                                      supports_context_parallel=True) is QCOMPILE_BACKEND
    assert list(AttentionBackendName).count(QCOMPILE_BACKEND) == 1


def test_backend_outside_an_installed_module_is_a_clear_error(i2v_pipe):
    import pytest
    import torch

    from runtime import dispatch

    saved, dispatch._current.site = dispatch._current.site, None
    try:
        with pytest.raises(RuntimeError, match="runtime.load"):
            q = torch.zeros(1, 4, 2, 64)
            diffusers.models.attention_dispatch.dispatch_attention_fn(q, q, q, backend=qcompile_backend())
    finally:
        dispatch._current.site = saved


def test_processor_changed_after_load_is_refused(i2v_pipe, compile_tiny):
    import pytest

    import runtime
    from runtime.tiny import run_tiny
    from tests.runtime.conftest import I2V, recipe

    plan = compile_tiny(recipe(I2V))
    with runtime.load(i2v_pipe, plan, backend="fp8-reference"):
        i2v_pipe.transformer.set_attention_backend("native")
        try:
            with pytest.raises(runtime.PlanMismatchError, match="set_attention_backend"):
                run_tiny(i2v_pipe)
        finally:
            i2v_pipe.transformer.reset_attention_backend()
