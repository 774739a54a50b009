"""int8_per_tensor: INT8 Q/K/V with per-tensor scales and an INT8 softmax, as torch_npu's FIA v1 full-quant mode
computes it on Atlas A2/A3 (docs/int8-a2a3.md). Quantizer and CPU reference: runtime/quant/int8.py."""

from qcompiler.formats.base import (
    HADAMARD_ROTATION,
    ROTATION_SEED,
    ForeignKeyRule,
    FormatSpec,
    NumericsKey,
    k_mean_subtraction_key,
)

NAME = "int8_per_tensor"
# quant_scale1 of the A2/A3 INT8 kernel: P~ = exp(s - max) in [0, 1] becomes an INT8 in [0, 127]; fixed by the
# INT8 range, so recipes cannot change it (the schemas pin it with `const`).
P_SCALE = 127
SCALE_SCOPES = ("call", "head")
# Numerics keys only this format has: a recipe with them and another dtype is refused (QC150).
_ONLY_HERE = ForeignKeyRule("QC150", "numerics.{key} applies to dtype {owner} only, the recipe's dtype is {dtype}",
                            "remove numerics.{key}, or set `dtype: {owner}`")

FORMAT = FormatSpec(
    name=NAME,
    element="int8",
    label="INT8, per-tensor scales, INT8 softmax (Atlas A2/A3)",
    description="INT8 Q/K/V with one float32 scale per tensor per call (or per head) and INT8 softmax probabilities, "
                "as torch_npu's FIA v1 full-quant mode computes it: the only quantized attention of Atlas A2/A3 "
                "(Ascend 910B/910C), which have no FP8 (docs/int8-a2a3.md)",
    order=3,
    # Defaults differ from FP8's: all three exact transforms on, since without them per-tensor INT8 is useless on
    # video-like inputs (cos-sim 0.495 -> 0.99+, docs/int8-a2a3.md; benchmarks/int8_accuracy.py). No block sizes:
    # one scale per tensor (or head).
    numerics=(
        HADAMARD_ROTATION,
        ROTATION_SEED,
        k_mean_subtraction_key(True),
        NumericsKey("v_rotation", True, (True, False), foreign=_ONLY_HERE),
        NumericsKey("p_scale", P_SCALE, (P_SCALE,), foreign=_ONLY_HERE),
        NumericsKey("scale_scope", "call", SCALE_SCOPES, foreign=_ONLY_HERE),
    ),
    speed_factor=None,
    speed_factor_source="never measured (docs/int8-a2a3.md: INT8 attention speed on Atlas A2/A3 is unmeasured)",
    targets={},  # MindIE-SD's quant_attention has no per-tensor INT8 mode; nor has vllm-omni or xDiT
    target_refusals={"*": "INT8 attention (int8_per_tensor) runs only in qcompile's own runtime (runtime.load on "
                          "Ascend A2/A3); no vllm-omni, MindIE-SD or xDiT setting runs it"},
    recipe_warning=(
        "QC151",
        f"dtype {NAME} runs only on Atlas A2/A3 NPUs (Ascend 910B/910C, backend int8-npu); anywhere else its "
        "quantized cells follow `fallback`, and no export target (vllm-omni, MindIE-SD, xDiT) runs it",
        "deploy on 910B/910C with runtime.load, or use dtype fp8_e4m3_per_block for Ascend 950",
    ),
    numerics_summary="int8 numerics: k_mean_subtraction={k_mean_subtraction}, q/k rotation={hadamard_rotation}, "
                     "v_rotation={v_rotation}, p_scale={p_scale}, scale_scope={scale_scope}; '#' cells run INT8, on "
                     "Atlas A2/A3 only (backend int8-npu)",
)
