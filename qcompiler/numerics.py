"""The one record of FP8 numerics: the quantized formats a plan may name, their block sizes, and the defaults.

Torch-free, so the compiler (which writes these values into every plan) and the runtime (which checks a plan
against them and quantizes with them: runtime/numerics.py) read the same table. A new format is a new row of
DTYPES; the schemas' `dtype` enums must list the same names (tests/compiler/test_numerics.py checks that).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DtypeSpec:
    """One quantized attention format.

    element: the element type of quantized q/k/v (a name, not a torch dtype: this module never imports torch).
    query_block_tokens / kv_block_tokens: tokens that share one dequant scale along the sequence axis, or None
    for one scale per tensor. description: one line for docs and `qcompile schema`.
    """

    name: str
    element: str
    query_block_tokens: int | None
    kv_block_tokens: int | None
    description: str


# Block sizes of the Ascend per-block FP8 kernel (torch_npu npu_fused_infer_attention_score_v2, quant mode 7):
# query dequant scales have shape [B, N, ceil(S_q / 128), 1] and key/value scales [B, N, ceil(S_kv / 256), 1],
# so one scale covers 128 query tokens and 256 key/value tokens. The kernel fixes them; recipes cannot set them.
QUERY_BLOCK_TOKENS = 128
KV_BLOCK_TOKENS = 256

# Keyed by the name recipes and plans use. Issues adding formats (MX, INT8) add rows here.
DTYPES: dict[str, DtypeSpec] = {
    "fp8_e4m3_per_block": DtypeSpec(
        name="fp8_e4m3_per_block",
        element="float8_e4m3fn",
        query_block_tokens=QUERY_BLOCK_TOKENS,
        kv_block_tokens=KV_BLOCK_TOKENS,
        description="float8 e4m3, one scale per (batch, head, 128-token query block) and per (batch, head, "
        "256-token key/value block), as the Ascend kernel's quant mode 7 does",
    ),
}
DEFAULT_DTYPE = "fp8_e4m3_per_block"

# The seed vllm-omni passes to msModelSlim's create_rot for its randomized Hadamard rotation. Our default, so a
# plan compiled without `numerics.rotation_seed` quantizes exactly as vllm-omni does.
DEFAULT_ROTATION_SEED = 425500
# Recipes, plans and `qcompile calibrate` accept 32-bit seeds (torch.Generator.manual_seed itself takes 64 bits;
# 32 keeps the seed exact in every JSON reader, including ones that parse numbers as doubles).
MAX_ROTATION_SEED = 2**32 - 1

# What `numerics:` means when a recipe leaves a key out. Block sizes are not here: they come from the dtype.
DEFAULT_NUMERICS = {
    "hadamard_rotation": True,
    "rotation_seed": DEFAULT_ROTATION_SEED,
    "k_mean_subtraction": False,
}


def plan_numerics(dtype: str, recipe_numerics: dict | None) -> dict:
    """The `numerics` object a plan records for `dtype` and a recipe's (possibly partial) `numerics:` mapping."""
    spec = DTYPES[dtype]
    given = recipe_numerics or {}
    return {
        "hadamard_rotation": given.get("hadamard_rotation", DEFAULT_NUMERICS["hadamard_rotation"]),
        "rotation_seed": given.get("rotation_seed", DEFAULT_NUMERICS["rotation_seed"]),
        "query_block_tokens": spec.query_block_tokens,
        "kv_block_tokens": spec.kv_block_tokens,
        "k_mean_subtraction": given.get("k_mean_subtraction", DEFAULT_NUMERICS["k_mean_subtraction"]),
    }
