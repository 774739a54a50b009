"""fp8_e4m3_per_block: float8 e4m3 with per-block float32 scales, as the Ascend FIA kernel's quant mode 7 takes
them (the default format). Quantizer: runtime/quant/per_block.py."""

from qcompiler.formats.base import ForeignKeyRule, FormatSpec, NumericsKey, per_block_numerics
from qcompiler.numerics import DEFAULT_PV_PRECISION, PV_PRECISIONS, SEED_FA_FP8_S, SEED_FA_NATIVE_S

FORMAT = FormatSpec(
    name="fp8_e4m3_per_block",
    element="float8_e4m3fn",
    label="FP8 e4m3, per-block fp32 scales",
    description="float8 e4m3 with one float32 scale per (batch, head, 128-token query block) and per (batch, head, "
                "256-token key/value block), as the Ascend FIA kernel's quant mode 7 takes it",
    order=0,
    numerics=per_block_numerics(
        # Recorded only when a recipe sets it, so plans that never name it keep their hash. The MX kernels'
        # handling of P is their own (not an option): QC152 refuses the key with another dtype.
        NumericsKey("pv_precision", DEFAULT_PV_PRECISION, PV_PRECISIONS, when_set=True, foreign=ForeignKeyRule(
            "QC152", "`numerics.{key}` applies to dtype {owner}, not `{dtype}`",
            "remove `{key}`, or use `dtype: {owner}`", at_key=False)),
    ),
    # The seed's NPU measurement (Wan2.2 I2V 1280x720, 61 frames, 4 steps): flash attention 6.81 s in BF16,
    # 5.43 s with this format (/work/shared/reference/quality-and-speed.md, "Speed anchors").
    speed_factor=round(SEED_FA_FP8_S / SEED_FA_NATIVE_S, 3),
    speed_factor_source=f"the seed's NPU measurement (Wan2.2 I2V 1280x720, 61 frames, 4 steps: flash attention "
                        f"{SEED_FA_NATIVE_S} s -> {SEED_FA_FP8_S} s)",
    targets={"vllm-omni": "fp8", "mindiesd-precision": "fp8", "mindiesd-strategy": "FP8", "xdit": "FLASH_3_FP8"},
    display_name="FP8",
    cell_word="fp8",
)
