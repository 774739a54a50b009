"""mxfp4_e2m1: OCP MX v1.0 MXFP4 (e2m1 elements, one E8M0 scale per 32 elements, sequences padded to 512), as
MindIE-SD 3.1.0's MXFP4QuantFA does it. Quantizer: runtime/quant/mx.py."""

from qcompiler.formats.base import FormatSpec, per_block_numerics

FORMAT = FormatSpec(
    name="mxfp4_e2m1",
    element="float4_e2m1",
    label="MXFP4 e2m1, 32-element E8M0 blocks",
    description="OCP MX v1.0 MXFP4: float4 e2m1 elements, one power-of-two (E8M0) scale per 32 elements; Q and K "
                "blocked along the head dim, V along the sequence, sequences zero-padded to a multiple of 512 "
                "(as MindIE-SD 3.1.0's MXFP4QuantFA does it)",
    order=2,
    numerics=per_block_numerics(),
    speed_factor=None,  # no timing of MindIE-SD's MXFP4QuantFA exists yet
    speed_factor_source="never measured (no timing of an MXFP4 attention kernel yet)",
    targets={"vllm-omni": "mxfp4", "mindiesd-precision": "mxfp4", "mindiesd-strategy": "MXFP4", "xdit": "AITER_MXFP4"},
)
