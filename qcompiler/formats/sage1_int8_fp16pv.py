"""sage1_int8_fp16pv: SageAttention 1's numerics, as `sageattention.sageattn` 1.0.6 (the PyPI wheel, Triton)
computes them: K smoothed, INT8 Q per 128-token block (sm_scale * log2 e folded in), INT8 K per 64-token block,
FP16 P and V, P.V accumulated in FP16 per 64-key block into FP32 (docs/sageattention.md). Quantizer and exact CPU
reference: runtime/quant/sage_formats.py (on runtime/quant/sage.py); kernel backend: sage-v1."""

from qcompiler.formats.base import FormatSpec, smoothed_unrotated_numerics

NAME = "sage1_int8_fp16pv"
# [v1] quant_per_block.py:33 (BLKQ=128, BLKK=64): the library's only granularity, fixed. Not recorded as
# numerics keys: the plan schema pins query_block_tokens / kv_block_tokens to the per-block FP8 kernel's 128 / 256.
Q_BLOCK_TOKENS = 128
K_BLOCK_TOKENS = 64

FORMAT = FormatSpec(
    name=NAME,
    element="int8",
    label="SageAttention 1: INT8 Q/K per block, K smoothed, FP16 P.V",
    description="SageAttention 1 (sageattention 1.0.6 `sageattn`, Triton, sm80+): K minus its token mean, INT8 Q "
                "per 128-token block and INT8 K per 64-token block (scale = amax / 127), FP16 P and V with P.V "
                "accumulated in FP16 per 64 keys into FP32; no Q/K rotation (the library does none)",
    order=4,
    numerics=smoothed_unrotated_numerics("fp16"),
    speed_factor=None,
    speed_factor_source="never measured against BF16 attention on one card (the SageAttention repo's chart, 518 "
                        "TOPS vs FlashAttention-2's 339 at 32K, names no GPU here: "
                        "/work/shared/reference/gpu-fp8-attention.md, 'Anchors')",
    targets={},
    target_refusals={"*": "SageAttention numerics (sage1_int8_fp16pv) run only in qcompile's own runtime "
                          "(runtime.load with backend sage-v1 on an NVIDIA sm80+ GPU, or the reference); no "
                          "vllm-omni, MindIE-SD or xDiT setting runs a per-cell SageAttention plan"},
    recipe_warning=(
        "QC151",
        f"dtype {NAME} runs on NVIDIA sm80+ GPUs with sageattention 1.0.6 installed (backend sage-v1); anywhere "
        "else its quantized cells follow `fallback`, and no export target runs it",
        "deploy with runtime.load on a CUDA machine (pip install sageattention==1.0.6), or pass backend='reference' "
        "to emulate it on CPU",
    ),
    numerics_summary="sage1 numerics: k smoothing={k_mean_subtraction}, INT8 Q per 128 / K per 64 "
                     "tokens, FP16 P.V, no rotation; quantized cells run sageattention's "
                     "`sageattn` (backend sage-v1)",
)
