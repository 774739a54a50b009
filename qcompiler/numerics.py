"""The one record of attention numerics: the quantized formats a recipe can ask for (one row per `dtype`), their
block sizes, the rotation seed and the defaults.

Torch-free, so the compiler (which writes these values into every plan), the CLI (`--dtype` choices, `show`,
`report`) and the runtime (runtime/numerics.py: which quantizer and which entry point serve a plan) read the
same table. Adding a format = a row of DTYPES, the same name in the schemas' `dtype` enums (tests/compiler/
test_numerics.py checks they agree), a quantizer under runtime/quant/ and, where an NPU entry point serves it,
its name in that backend's `dtypes` (runtime/backends/npu_*.py).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class QuantDtype:
    """One quantized attention format.

    element: the element type of quantized q/k/v (a name, not a torch dtype: this module never imports torch).
    label: a few words for `qcompile show` and reports. description: one sentence for docs and --help.
    quant_attention_precision: the `precision=` MindIE-SD's quant_attention takes for it (None: it takes none).
    speed_factor: quantized attention time / native (BF16) attention time for the same work, as measured on a
    target (None: never measured; estimates then say so instead of borrowing another format's figure).
    speed_factor_source: where speed_factor comes from, or why there is none.
    """

    name: str
    element: str
    label: str
    description: str
    quant_attention_precision: str | None
    speed_factor: float | None = None
    speed_factor_source: str = "never measured"


# The seed's NPU timing of flash attention for one Wan2.2 I2V video (1280x720, 61 frames, 4 steps), BF16 vs
# fp8_e4m3_per_block: the only measured speed of a quantized format so far.
SEED_FA_NATIVE_S = 6.81
SEED_FA_FP8_S = 5.43

DTYPES: dict[str, QuantDtype] = {
    row.name: row
    for row in (
        QuantDtype(
            "fp8_e4m3_per_block",
            "float8_e4m3fn",
            "FP8 e4m3, per-block fp32 scales",
            "float8 e4m3 with one float32 scale per (batch, head, 128-token query block) and per (batch, head, "
            "256-token key/value block), as the Ascend FIA kernel's quant mode 7 takes it",
            "fp8",
            # The seed's NPU measurement (Wan2.2 I2V 1280x720, 61 frames, 4 steps): flash attention 6.81 s in
            # BF16, 5.43 s with this format (/work/shared/reference/quality-and-speed.md, "Speed anchors").
            round(SEED_FA_FP8_S / SEED_FA_NATIVE_S, 3),
            f"the seed's NPU measurement (Wan2.2 I2V 1280x720, 61 frames, 4 steps: flash attention "
            f"{SEED_FA_NATIVE_S} s -> {SEED_FA_FP8_S} s)",
        ),
        QuantDtype(
            "mxfp8_e4m3",
            "float8_e4m3fn",
            "MXFP8 e4m3, 32-element E8M0 blocks",
            "OCP MX v1.0 MXFP8: float8 e4m3 elements, one power-of-two (E8M0) scale per 32 elements; Q and K "
            "blocked along the head dim, V along the tokens (as MindIE-SD's MXFP8 path quantizes them)",
            "mxfp8",
            None,  # no timing of an MXFP8 attention kernel exists yet
            "never measured (no timing of an MXFP8 attention kernel yet)",
        ),
        QuantDtype(
            "mxfp4_e2m1",
            "float4_e2m1",
            "MXFP4 e2m1, 32-element E8M0 blocks",
            "OCP MX v1.0 MXFP4: float4 e2m1 elements, one power-of-two (E8M0) scale per 32 elements; Q and K "
            "blocked along the head dim, V along the sequence, sequences zero-padded to a multiple of 512 "
            "(as MindIE-SD 3.1.0's MXFP4QuantFA does it)",
            "mxfp4",
            None,  # no timing of MindIE-SD's MXFP4QuantFA exists yet
            "never measured (no timing of an MXFP4 attention kernel yet)",
        ),
        QuantDtype(
            "int8_per_tensor",
            "int8",
            "INT8, per-tensor scales, INT8 softmax (Atlas A2/A3)",
            "INT8 Q/K/V with one float32 scale per tensor per call (or per head) and INT8 softmax probabilities, "
            "as torch_npu's FIA v1 full-quant mode computes it: the only quantized attention of Atlas A2/A3 "
            "(Ascend 910B/910C), which have no FP8 (docs/int8-a2a3.md)",
            None,  # MindIE-SD's quant_attention has no per-tensor INT8 mode
            None,  # docs/int8-a2a3.md: speed on Atlas A2/A3 is unmeasured
            "never measured (docs/int8-a2a3.md: INT8 attention speed on Atlas A2/A3 is unmeasured)",
        ),
    )
}
DEFAULT_DTYPE = "fp8_e4m3_per_block"
DTYPE_NAMES = tuple(DTYPES)

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
PV_PRECISION_DTYPES = ("fp8_e4m3_per_block",)  # the MX kernels' handling of P is their own (not an option)
# With "e4m3", P (in [0, 1]) is scaled onto e4m3's full range [0, 448] before rounding, so small probabilities
# keep 3 mantissa bits instead of falling into e4m3's subnormals; the 1/448 is folded into V's dequant scale.
P_E4M3_SCALE = 448.0

# What `numerics:` means when a recipe leaves a key out. Block sizes are not here: the kernel fixes them.
DEFAULT_NUMERICS = {
    "hadamard_rotation": True,
    "rotation_seed": DEFAULT_ROTATION_SEED,
    "k_mean_subtraction": False,
}

# --- int8_per_tensor (issue 14) ---
INT8_DTYPE = "int8_per_tensor"
# quant_scale1 of the A2/A3 INT8 kernel: P~ = exp(s - max) in [0, 1] becomes an INT8 in [0, 127]; fixed by the
# INT8 range, so recipes cannot change it (the schemas pin it with `const`).
INT8_P_SCALE = 127
INT8_SCALE_SCOPES = ("call", "head")
# Numerics keys only int8_per_tensor has (a recipe with them and another dtype is refused: QC150).
INT8_ONLY_NUMERICS = ("v_rotation", "p_scale", "scale_scope")
# int8_per_tensor's defaults differ from FP8's: all three exact transforms on, since without them per-tensor INT8
# is useless on video-like inputs (cos-sim 0.495 -> 0.99+, docs/int8-a2a3.md; benchmarks/int8_accuracy.py).
DEFAULT_INT8_NUMERICS = {
    "hadamard_rotation": True,
    "rotation_seed": DEFAULT_ROTATION_SEED,
    "k_mean_subtraction": True,
    "v_rotation": True,
    "p_scale": INT8_P_SCALE,
    "scale_scope": "call",
}


def plan_numerics(dtype: str, recipe_numerics: dict | None) -> dict:
    """The `numerics` object a plan records for `dtype` and a recipe's (possibly partial) `numerics:` mapping.

    `query_block_tokens`/`kv_block_tokens` are the per-block FP8 kernel's constants (the plan schema pins them);
    MX formats block along 32 elements (MX_BLOCK_ELEMENTS), fixed by the format, so they record them unchanged.
    int8_per_tensor records its own keys instead (DEFAULT_INT8_NUMERICS).
    """
    DTYPES[dtype]  # a KeyError here is a schema bug: the schema's enum lists DTYPES' names
    given = recipe_numerics or {}
    if dtype == INT8_DTYPE:  # no block sizes: one scale per tensor (or head), its own keys and defaults
        return {key: given.get(key, default) for key, default in DEFAULT_INT8_NUMERICS.items()}
    numerics = {
        "hadamard_rotation": given.get("hadamard_rotation", DEFAULT_NUMERICS["hadamard_rotation"]),
        "rotation_seed": given.get("rotation_seed", DEFAULT_NUMERICS["rotation_seed"]),
        "query_block_tokens": QUERY_BLOCK_TOKENS,
        "kv_block_tokens": KV_BLOCK_TOKENS,
        "k_mean_subtraction": given.get("k_mean_subtraction", DEFAULT_NUMERICS["k_mean_subtraction"]),
    }
    if "pv_precision" in given:  # written only when set, so plans that never name it keep their hash
        numerics["pv_precision"] = given["pv_precision"]
    return numerics


def quantized_name(name: str) -> str:
    """How output names what a plan's quantized cells run: "FP8" for the per-block FP8 format, otherwise
    "quantized (<dtype>)", so an MXFP4 or INT8 plan is never called FP8."""
    return "FP8" if name == DEFAULT_DTYPE else f"quantized ({name})"


def speed_factor(name: str) -> float | None:
    """The dtype's measured quantized/native attention time ratio, or None where none is known."""
    row = DTYPES.get(name)
    return row.speed_factor if row else None


def dtype_label(name: str) -> str:
    """`name (label)` for display; an unknown name is shown as is (a plan's schema check refuses it earlier)."""
    row = DTYPES.get(name)
    return f"{name} ({row.label})" if row else name
