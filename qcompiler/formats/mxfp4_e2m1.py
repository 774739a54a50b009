"""mxfp4_e2m1: OCP MX v1.0 MXFP4 (e2m1 elements, one E8M0 scale per 32 elements, sequences padded to 512), as
MindIE-SD 3.1.0's MXFP4QuantFA does it. Quantizer: runtime/quant/mx.py."""

from qcompiler.formats.base import HADAMARD_ROTATION, ROTATION_SEED, FormatSpec, NumericsKey, k_mean_subtraction_key
from qcompiler.numerics import KV_BLOCK_TOKENS, QUERY_BLOCK_TOKENS

FORMAT = FormatSpec(
    name="mxfp4_e2m1",
    element="float4_e2m1",
    label="MXFP4 e2m1, 32-element E8M0 blocks",
    description="OCP MX v1.0 MXFP4: float4 e2m1 elements, one power-of-two (E8M0) scale per 32 elements; Q and K "
                "blocked along the head dim, V along the sequence, sequences zero-padded to a multiple of 512 "
                "(as MindIE-SD 3.1.0's MXFP4QuantFA does it)",
    order=2,
    numerics=(
        HADAMARD_ROTATION,
        ROTATION_SEED,
        NumericsKey("query_block_tokens", QUERY_BLOCK_TOKENS, (QUERY_BLOCK_TOKENS,), settable=False),
        NumericsKey("kv_block_tokens", KV_BLOCK_TOKENS, (KV_BLOCK_TOKENS,), settable=False),
        k_mean_subtraction_key(False),
    ),
    speed_factor=None,  # no timing of MindIE-SD's MXFP4QuantFA exists yet
    speed_factor_source="never measured (no timing of an MXFP4 attention kernel yet)",
    targets={"vllm-omni": "mxfp4", "mindiesd-precision": "mxfp4", "mindiesd-strategy": "MXFP4", "xdit": "AITER_MXFP4"},
)
