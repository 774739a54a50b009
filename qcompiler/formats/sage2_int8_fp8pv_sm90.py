"""sage2_int8_fp8pv_sm90: SageAttention 2's Hopper kernel `sageattn_qk_int8_pv_fp8_cuda_sm90` with the defaults
diffusers leaves in place: K smoothed, INT8 Q and K per thread (qk_quant_gran="per_thread"), V in FP8 e4m3 with
one scale per channel, P in FP8 e4m3 (running row max -> 448), P.V accumulated in FP32 ("fp32+fp32")
(docs/sageattention.md). Quantizer and exact CPU reference: runtime/quant/sage_formats.py (on
runtime/quant/sage.py); kernel backend: sage-sm90."""

from qcompiler.formats.base import FormatSpec, smoothed_unrotated_numerics

NAME = "sage2_int8_fp8pv_sm90"

FORMAT = FormatSpec(
    name=NAME,
    element="int8",
    label="SageAttention 2 sm90: INT8 Q/K per thread, FP8 P.V, FP32 accumulation",
    description="SageAttention 2's `sageattn_qk_int8_pv_fp8_cuda_sm90` (Hopper): K minus its token mean, INT8 Q "
                "per thread (2 tokens of a 16-token warp band) and K per thread (32 tokens of a 128-token block), "
                "V in FP8 e4m3 per channel, P in FP8 e4m3, P.V accumulated in FP32; no Q/K rotation",
    order=5,
    # The Q/K granularity is the library's default per_thread, fixed (docs/sageattention.md): no key records it.
    numerics=smoothed_unrotated_numerics("e4m3"),
    speed_factor=None,
    speed_factor_source="never measured against BF16 attention on one card (published: 882 TOPS vs FA3-FP8's 892 "
                        "on H100 at head dim 128, an FP8 comparison, not a BF16 one: "
                        "/work/shared/reference/gpu-fp8-attention.md, 'Anchors')",
    targets={},
    target_refusals={"*": "SageAttention numerics (sage2_int8_fp8pv_sm90) run only in qcompile's own runtime "
                          "(runtime.load with backend sage-sm90 on an H100/H200 with SageAttention 2 built, or the "
                          "reference); no vllm-omni, MindIE-SD or xDiT setting runs a per-cell SageAttention plan"},
    recipe_warning=(
        "QC151",
        f"dtype {NAME} runs on NVIDIA sm90 GPUs (H100/H200) with SageAttention 2 built from source (backend "
        "sage-sm90); anywhere else its quantized cells follow `fallback`, and no export target runs it",
        "deploy with runtime.load on an H100/H200 (docs/gpu.md has the install lines), or pass backend='reference' "
        "to emulate it on CPU",
    ),
    numerics_summary="sage2 sm90 numerics: k smoothing={k_mean_subtraction}, INT8 Q/K per thread, FP8 V per "
                     "channel and FP8 P, FP32 P.V accumulation, no rotation; quantized cells run "
                     "`sageattn_qk_int8_pv_fp8_cuda_sm90` (backend sage-sm90)",
)
