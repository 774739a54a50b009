"""Numerics constants shared by several formats and by the kernels: block sizes fixed by kernel contracts, the
rotation seed, the P @ V precisions, and the measured speed anchors. What a format is (its keys, defaults,
checks, plan record, cost factor and target names) lives in its own module of qcompiler/formats/. Torch-free.
"""

from __future__ import annotations

# Block sizes of the Ascend per-block FP8 kernel (torch_npu npu_fused_infer_attention_score_v2, quant mode 7):
# query dequant scales have shape [B, N, ceil(S_q / 128), 1] and key/value scales [B, N, ceil(S_kv / 256), 1],
# so one scale covers 128 query tokens and 256 key/value tokens. The kernel fixes them; recipes cannot set them.
QUERY_BLOCK_TOKENS = 128
KV_BLOCK_TOKENS = 256

# OCP Microscaling Formats (MX) v1.0, section 5: a block of 32 consecutive elements shares one E8M0 scale.
MX_BLOCK_ELEMENTS = 32
# MindIE-SD 3.1.0 MXFP4QuantFA zero-pads the query and key/value sequences to a multiple of 512 tokens
# (MXFP4_FA_SEQ_PAD_BASE in mindiesd/quantization/layer.py) before quantizing and calling quant_flash_attn.
MXFP4_SEQUENCE_MULTIPLE = 512

# The seed's NPU timing of flash attention for one Wan2.2 I2V video (1280x720, 61 frames, 4 steps), BF16 vs
# fp8_e4m3_per_block: the only measured speed of a quantized format so far.
SEED_FA_NATIVE_S = 6.81
SEED_FA_FP8_S = 5.43

# The seed vllm-omni passes to its rotation (msModelSlim's create_rot in 0.22-0.28, its own
# get_quant_attention_rotation in 0.30). Our default, so a plan compiled without `numerics.rotation_seed`
# rotates exactly as vllm-omni does.
DEFAULT_ROTATION_SEED = 425500
# Recipes, plans and `qcompile calibrate` accept 32-bit seeds (torch.Generator.manual_seed itself takes 64 bits;
# 32 keeps the seed exact in every JSON reader, including ones that parse numbers as doubles).
MAX_ROTATION_SEED = 2**32 - 1

# Precision of the softmax probabilities P in the P @ V product of the per-block FP8 kernels: "e4m3" (P * 448 cast
# to e4m3, as the Ascend kernel does; the default, also when a plan omits the key) or "fp16" (fp8-triton only).
PV_PRECISIONS = ("e4m3", "fp16")
DEFAULT_PV_PRECISION = "e4m3"
# With "e4m3", P (in [0, 1]) is scaled onto e4m3's full range [0, 448] before rounding, so small probabilities
# keep 3 mantissa bits instead of falling into e4m3's subnormals; the 1/448 is folded into V's dequant scale.
P_E4M3_SCALE = 448.0
