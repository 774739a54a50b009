"""The quantized attention formats a recipe can ask for: one row per `dtype`, read by the compiler, the CLI
(`--dtype` choices, `show`, `report`) and the runtime (which quantizer and which NPU entry point serve it).

Torch-free. Adding a format = adding a row here, a quantizer under runtime/quant/ and, where an NPU entry point
serves it, its name in that backend's `dtypes` (runtime/backends/npu_*.py).
"""

from __future__ import annotations

from dataclasses import dataclass

# OCP Microscaling Formats (MX) v1.0, section 5: a block of 32 consecutive elements shares one E8M0 scale.
MX_BLOCK_ELEMENTS = 32
# MindIE-SD 3.1.0 MXFP4QuantFA zero-pads the query and key/value sequences to a multiple of 512 tokens
# (MXFP4_FA_SEQ_PAD_BASE in mindiesd/quantization/layer.py) before quantizing and calling quant_flash_attn.
MXFP4_SEQUENCE_MULTIPLE = 512


@dataclass(frozen=True)
class QuantDtype:
    name: str  # the recipe/plan spelling
    label: str  # a few words for `qcompile show` and reports
    description: str  # one sentence for docs and --help
    quant_attention_precision: str | None  # the `precision=` MindIE-SD's quant_attention takes (None: none)


DTYPES: dict[str, QuantDtype] = {
    row.name: row
    for row in (
        QuantDtype(
            "fp8_e4m3_per_block",
            "FP8 e4m3, per-block fp32 scales",
            "float8 e4m3 with one float32 scale per (batch, head, 128-token query block) and per (batch, head, "
            "256-token key/value block), as the Ascend FIA kernel's quant mode 7 takes it",
            "fp8",
        ),
        QuantDtype(
            "mxfp8_e4m3",
            "MXFP8 e4m3, 32-element E8M0 blocks",
            "OCP MX v1.0 MXFP8: float8 e4m3 elements, one power-of-two (E8M0) scale per 32 elements; Q and K "
            "blocked along the head dim, V along the tokens (as MindIE-SD's MXFP8 path quantizes them)",
            "mxfp8",
        ),
        QuantDtype(
            "mxfp4_e2m1",
            "MXFP4 e2m1, 32-element E8M0 blocks",
            "OCP MX v1.0 MXFP4: float4 e2m1 elements, one power-of-two (E8M0) scale per 32 elements; Q and K "
            "blocked along the head dim, V along the sequence, sequences zero-padded to a multiple of 512 "
            "(as MindIE-SD 3.1.0's MXFP4QuantFA does it)",
            "mxfp4",
        ),
    )
}
DEFAULT_DTYPE = "fp8_e4m3_per_block"
DTYPE_NAMES = tuple(DTYPES)


def dtype_label(name: str) -> str:
    """`name (label)` for display; an unknown name is shown as is (a plan's schema check refuses it earlier)."""
    row = DTYPES.get(name)
    return f"{name} ({row.label})" if row else name
