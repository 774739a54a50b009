"""Mochi 1 on its tiny offline pipeline (runtime/models/tiny_mochi.py): what its attention calls are, and that
runtime.load refuses it, leaving the pipeline stock.

MochiAttnProcessor2_0 loops over the batch and calls F.scaled_dot_product_attention once per sample over [video,
that sample's valid text tokens], without a mask; its MochiAttention is no AttentionModuleMixin (no
`set_processor`). Neither attention entry of the runtime serves that, and the pipeline's loop sets its current
timestep to `1000 - t`, which the step tracker does not follow: docs/families.md says what serving Mochi needs.
Slow: the pipeline takes seconds to build.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

import runtime
from runtime.errors import PlanMismatchError
from runtime.models import tiny_mochi
from tests.runtime.models.family_runtime import STEPS, compile_shipped, run
from tests.runtime.models.tiny_family_observer import observe

# diffusers' Mochi RoPE asks CPU autocast for float32, which it declines with a warning
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:In CPU autocast")]

DATA = Path(__file__).resolve().parents[3] / "qcompiler" / "families" / "data"


@pytest.fixture(scope="module")
def pipe_stock():
    pipe = tiny_mochi.build_tiny_pipeline(0)
    return pipe, run(tiny_mochi, pipe)


def _valid_tokens(pipe, text: str) -> int:
    return int(pipe.tokenizer(text, padding="max_length", max_length=tiny_mochi.TEXT_TOKENS, truncation=True,
                              return_tensors="pt").attention_mask.sum())


def test_one_sdpa_call_per_sample_over_its_valid_text_tokens(pipe_stock):
    """Batched CFG (one forward per step, batch 2) and, per attention module, one SDPA call per sample (batch 1,
    no mask) over the video tokens and that sample's valid text tokens: negative prompt first."""
    pipe, _ = pipe_stock
    family = json.loads((DATA / "mochi1.json").read_text())
    tiny = family["variants"]["tiny"]
    video = tiny["reference_shapes"]["tokens"]["video"]
    assert len(pipe.transformer.transformer_blocks) == family["components"][0]["block_lists"][0]["length"]
    with observe(pipe.transformer) as obs:
        run(tiny_mochi, pipe, steps=2)
    assert len(obs.forwards) == 2
    assert obs.per_forward(0) == Counter({("transformer_blocks", "attn1", "sdpa", False): 2 * 48})
    lengths = [video + _valid_tokens(pipe, text) for text in ("blurry", "a red cube")]
    calls = obs.forwards[0]
    assert [(c.batch, c.heads, c.head_dim) for c in calls] == [(1, 2, 64)] * 96
    assert [(c.q_len, c.kv_len) for c in calls] == [(n, n) for _ in range(48) for n in lengths]
    assert lengths[0] != lengths[1] and max(lengths) < video + tiny["reference_shapes"]["tokens"]["text"]


def test_runtime_load_refuses_and_leaves_the_pipeline_stock(pipe_stock, tmp_path):
    pipe, stock = pipe_stock
    plan = compile_shipped("mochi1", tmp_path / "plan.json")
    assert plan.uses_quantized()
    with pytest.raises(PlanMismatchError, match=r"transformer_blocks\.0\.attn1 \(joint attention\) is a "
                                                r"MochiAttention, .*cannot serve MochiTransformer3DModel yet"):
        runtime.load(pipe, plan, backend="reference")
    assert torch.equal(run(tiny_mochi, pipe, steps=STEPS), stock)
