"""mxfp8_e4m3: OCP MX v1.0 MXFP8 (e4m3 elements, one E8M0 scale per 32 elements). Quantizer: runtime/quant/mx.py."""

from qcompiler.formats.base import FormatSpec, per_block_numerics

FORMAT = FormatSpec(
    name="mxfp8_e4m3",
    element="float8_e4m3fn",
    label="MXFP8 e4m3, 32-element E8M0 blocks",
    description="OCP MX v1.0 MXFP8: float8 e4m3 elements, one power-of-two (E8M0) scale per 32 elements; Q and K "
                "blocked along the head dim, V along the tokens (as MindIE-SD's MXFP8 path quantizes them)",
    order=1,
    # MX formats block along 32 elements (MX_BLOCK_ELEMENTS), fixed by the format; their plans record the
    # per-block kernel's token block sizes unchanged (the plan schema pins them).
    numerics=per_block_numerics(),
    speed_factor=None,
    speed_factor_source="never measured (no timing of an MXFP8 attention kernel yet)",
    targets={"vllm-omni": "mxfp8", "mindiesd-precision": "mxfp8", "xdit": "AITER_MXFP8"},
    target_refusals={
        "mindiesd-strategy": "MXFP8 is not available online (OnlineQuantConfig accepts fa_quant_type FP8_DYNAMIC or "
                             "MXFP4_DYNAMIC only; MXFP8 attention exists only through a msModelSlim description file)",
    },
)
