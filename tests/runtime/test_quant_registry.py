"""runtime/quant/: each quantizer module registers the runtime side of its format (replaces a parallel table)."""

from __future__ import annotations

import pytest
import torch

from qcompiler.formats import FORMATS, Numerics
from runtime.numerics import kernel_attention_inputs
from runtime.quant import quantizer, register_quantizer, registered_quantizers


def test_every_registered_format_has_a_quantizer_and_nothing_else_does():
    assert set(registered_quantizers()) == set(FORMATS)


def test_a_quantizer_for_a_format_without_a_spec_is_refused():
    with pytest.raises(ValueError, match="unknown format 'fp6_nowhere'; add qcompiler/formats/fp6_nowhere.py first"):
        register_quantizer("fp6_nowhere", kernel_inputs=lambda *args: args)
    with pytest.raises(KeyError, match="no quantizer is registered for dtype 'fp6_nowhere'"):
        quantizer("fp6_nowhere")


def test_kernel_inputs_dispatch_on_the_plans_format():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 64, 2, 64, generator=generator) for _ in range(3))
    fp8 = kernel_attention_inputs(q, k, v, None, Numerics(hadamard_rotation=False))
    mxfp4 = kernel_attention_inputs(q, k, v, None, Numerics.for_dtype("mxfp4_e2m1", hadamard_rotation=False))
    assert fp8[0].shape == (1, 2, 64, 64) and mxfp4[0].shape == (1, 2, 512, 64)  # MXFP4 pads sequences to 512
    with pytest.raises(ValueError, match="int8_per_tensor quantizes inside its kernel"):
        kernel_attention_inputs(q, k, v, None, Numerics.int8())
