"""Quantized attention kernels against bf16 SDPA at Wan shapes on one NVIDIA GPU: time, TFLOPS, accuracy (against
exact fp32 attention and against qcompile's reference of each kernel), peak memory, in one table.

    python benchmarks/gpu_attention.py [--reps 5] [--shapes self-720p,cross-720p,...] [--json out.json]

Shapes (Wan2.x 14B: batch 1, head dim 128, bf16): self-attention over S = 32,760 tokens (480p) and 75,600 tokens
(720p), cross-attention 75,600 queries x 512 text tokens; 40 heads on one card, and per rank under Ulysses
context parallelism (the op runs after the all-to-all: the whole sequence, 40 / degree heads): `-u4` H=10,
`-u8` H=5.

Rows per shape:
- `sdpa-flash`, `sdpa-cudnn`: torch's scaled_dot_product_attention in bf16, forced onto one back end each.
- `fa3`: FlashAttention-3 (`flash_attn_interface.flash_attn_func`, bf16) when it is installed.
- `sage-v1`: the sage-v1 backend's call of sageattention 1.0.6 `sageattn` (k copied first: 1.0.6 smooths k in
  place); `sage-sm90`: the sage-sm90 backend's call of SageAttention 2's `sageattn_qk_int8_pv_fp8_cuda_sm90`.
  Each only where its backend is available (runtime/backends/sage_cuda.py says why not otherwise). Quantization
  is inside these calls, so their time includes it.
- `fp8-triton e4m3` / `fp8-triton fp16`: the Triton kernel alone (inputs already quantized), per PV precision.
- `quantize`: the per-block quantization (with the Hadamard rotation) of q, k and v on its own, i.e. the PyTorch
  function the runtime calls (runtime.numerics.quantize_attention_inputs).
- `fp8-reference e4m3`: the PyTorch emulation (accuracy only; it is not a kernel).
`cos ref`: cos-sim against qcompile's reference of the same kernel on the same inputs: the per-block emulation
for fp8-triton (runtime/backends/reference.py), and for the SageAttention rows the exact references
(runtime/quant/sage.py) on the first REFERENCE_ROWS queries of the first REFERENCE_HEADS heads, in float64 on the
GPU (quantization groups never cross those boundaries, so the rows are exact).
Time is the median of `--reps` CUDA-event-timed calls after 2 warm-up calls; TFLOPS = 4 * B * H * Sq * Skv * D /
time. Speed-up is against the faster of the two bf16 rows of the same shape, and only when that row and the
row itself were measured (never estimated); `+quant` adds the measured quantization time to fp8-triton's. Accuracy (cos-sim, rel-L1, RMSE as
in runtime.metrics) is against exact fp32 attention on the first ACCURACY_QUERIES queries (attention rows are
independent, so this is exact for them) on `random` (N(0, 1)) and `outlier` inputs (FlashAttention-3's: N(0, 1)
+ N(0, 10^2) * Bernoulli(0.001)). Peak memory is torch.cuda.max_memory_allocated during the timed calls
(inputs and every live tensor included).

Without a CUDA GPU it says so and exits 0: nothing is measured, nothing is printed as a figure. A row whose kernel
is missing here (no triton or sm90 for fp8-triton, no FA3, no SageAttention) prints why instead of figures.
Expected run time on one H100/H200: 1-3 minutes (estimated from FLOP counts and Triton compile time; never run).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from runtime.backends.fp8_triton import gpu_unavailable_reason  # noqa: E402
from runtime.backends.reference import attention_with_pv_precision  # noqa: E402
from runtime.backends.sage_cuda import Sage1Backend, Sm90Backend  # noqa: E402
from runtime.metrics import call_error  # noqa: E402
from runtime.numerics import (  # noqa: E402
    PV_PRECISIONS,
    Numerics,
    QuantizedAttentionInputs,
    dequantize_attention_inputs,  # noqa: E402
    quantize_attention_inputs,
)
from runtime.quant import quantizer  # noqa: E402
from runtime.quant.rotation import get_rotation  # noqa: E402

BATCH, HEADS, HEAD_DIM = 1, 40, 128  # Wan2.x 14B attention
SHAPES = {  # name: (query tokens, key/value tokens, heads)
    "self-480p": (32_760, 32_760, HEADS),
    "self-720p": (75_600, 75_600, HEADS),
    "cross-720p": (75_600, 512, HEADS),
    # Per rank under Ulysses 4 and 8: the full sequence, 40 / degree heads.
    "self-720p-u4": (75_600, 75_600, HEADS // 4),
    "cross-720p-u4": (75_600, 512, HEADS // 4),
    "self-720p-u8": (75_600, 75_600, HEADS // 8),
    "cross-720p-u8": (75_600, 512, HEADS // 8),
}
DEFAULT_SHAPES = ("self-720p", "cross-720p", "self-720p-u4", "cross-720p-u4", "self-720p-u8", "cross-720p-u8")
SAGE_BACKENDS = (Sage1Backend, Sm90Backend)
BF16_ROWS = ("sdpa-flash", "sdpa-cudnn")
# The SageAttention references are float64 loops over key blocks: this many rows of this many heads.
REFERENCE_ROWS = 128
REFERENCE_HEADS = 2
# Exact fp32 attention and the PyTorch reference run on this many leading queries (8 whole 128-token Q blocks):
# enough for stable error figures, small enough that fp32 over 75,600 keys stays quick and fits in memory.
ACCURACY_QUERIES = 1024
REFERENCE_QUERY_SLICE = 256
DEVICE = "cuda"
# fp32 exact attention: the memory-efficient back end takes fp32 and never materializes the score matrix.
EXACT_FP32_BACKEND = SDPBackend.EFFICIENT_ATTENTION
WARMUP_CALLS = 2
OUTLIER_PROBABILITY, OUTLIER_STD = 0.001, 10.0  # FlashAttention-3's outlier inputs


def inputs(kind: str, tokens_q: int, tokens_kv: int, heads: int = HEADS, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def one(tokens: int) -> torch.Tensor:
        x = torch.randn(BATCH, tokens, heads, HEAD_DIM, device=DEVICE, generator=g)
        if kind == "outlier":
            mask = torch.rand(x.shape, device=DEVICE, generator=g) < OUTLIER_PROBABILITY
            x = x + mask * torch.randn(x.shape, device=DEVICE, generator=g) * OUTLIER_STD
        return x.to(torch.bfloat16)

    return one(tokens_q), one(tokens_kv), one(tokens_kv)


def time_ms(fn: Callable[[], object], reps: int) -> tuple[float, int]:
    """Median milliseconds over `reps` calls after warm-up, and peak bytes allocated during them."""
    for _ in range(WARMUP_CALLS):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times), torch.cuda.max_memory_allocated()


def sdpa(backend) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    def run(q, k, v):
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    return run


def leading_queries(quantized: QuantizedAttentionInputs, tokens: int) -> QuantizedAttentionInputs:
    blocks = math.ceil(tokens / 128)
    return QuantizedAttentionInputs(quantized.query[:, :, :tokens], quantized.query_scale[:, :, :blocks],
                                    quantized.key, quantized.key_scale, quantized.value, quantized.value_scale)


def fa3_function() -> tuple[Callable | None, str | None]:
    try:
        from flash_attn_interface import flash_attn_func
    except Exception as exc:
        return None, f"FlashAttention-3 is not installed ({type(exc).__name__}: flash_attn_interface)"
    return flash_attn_func, None


def _output(result):
    # Some FlashAttention-3 releases return (out, softmax_lse).
    return result[0] if isinstance(result, tuple) else result


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def sage_reference_cos(backend, out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
    """cos-sim of the kernel's output with its exact reference on the leading rows and heads."""
    heads = slice(0, REFERENCE_HEADS)
    reference = quantizer(backend.numerics.dtype).attention_reference(
        q[:, :REFERENCE_ROWS, heads], k[:, :, heads], v[:, :, heads], None, backend.numerics)
    return _cos(out[:, :REFERENCE_ROWS, heads], reference)


def measure_shape(name: str, reps: int) -> list[dict]:
    tokens_q, tokens_kv, heads = SHAPES[name]
    flops = 4 * BATCH * heads * tokens_q * tokens_kv * HEAD_DIM
    triton_reason = gpu_unavailable_reason()
    if triton_reason is None:
        from runtime.kernels.triton_fp8_attention import fp8_attention
    fa3, fa3_reason = fa3_function()
    numerics = Numerics()
    rotation = get_rotation(DEVICE, torch.bfloat16, HEAD_DIM, numerics.rotation_seed)
    scale = 1.0 / math.sqrt(HEAD_DIM)
    rows: dict[str, dict] = {}

    def row(label: str) -> dict:
        return rows.setdefault(label, {"shape": name, "variant": label, "ms": None, "tflops": None, "peak_gib": None,
                                       "error": None, "accuracy": {}, "cos_ref": {}})

    def measure_inputs(kind: str) -> None:
        """Time (on `random` only) and score every row on one input distribution; its tensors die on return."""
        q, k, v = inputs(kind, tokens_q, tokens_kv, heads)
        exact = sdpa(EXACT_FP32_BACKEND)(
            q[:, :ACCURACY_QUERIES].float(), k.float(), v.float())
        quantized = quantize_attention_inputs(q, k, v, rotation, numerics)
        outputs: dict[str, torch.Tensor] = {}
        candidates: dict[str, Callable[[], torch.Tensor]] = {
            "sdpa-flash": lambda: sdpa(SDPBackend.FLASH_ATTENTION)(q, k, v),
            "sdpa-cudnn": lambda: sdpa(SDPBackend.CUDNN_ATTENTION)(q, k, v),
        }
        unavailable: dict[str, str] = {}
        if fa3 is not None:
            candidates["fa3"] = lambda: _output(fa3(q, k, v, softmax_scale=scale))
        else:
            unavailable["fa3"] = fa3_reason
        for pv in PV_PRECISIONS:
            if triton_reason is None:
                candidates[f"fp8-triton {pv}"] = (lambda pv=pv: fp8_attention(
                    quantized, softmax_scale=scale, pv_precision=pv, out_dtype=torch.bfloat16))
            else:
                unavailable[f"fp8-triton {pv}"] = triton_reason
        sage = {}
        for cls in SAGE_BACKENDS:
            reason = cls.environment_reason()
            if reason is None:
                sage[cls.name] = cls(Numerics.for_dtype(cls.dtypes[0]))
                candidates[cls.name] = lambda backend=sage[cls.name]: backend.attend(q, k, v, None)
            else:
                unavailable[cls.name] = reason
        for label, why in unavailable.items():
            row(label)["error"] = why
        for label, fn in candidates.items():
            r = row(label)
            try:
                out = fn()
                if kind == "random":  # time once per shape, on the random inputs
                    ms, peak = time_ms(fn, reps)
                    r.update(ms=ms, tflops=flops / (ms * 1e-3) / 1e12, peak_gib=peak / 2**30)
            except Exception as exc:  # a back end this build or GPU lacks: reported, never timed
                r["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                continue
            r["accuracy"][kind] = dataclasses.asdict(call_error(out[:, :ACCURACY_QUERIES], exact))
            if label in sage:
                try:
                    r["cos_ref"][kind] = sage_reference_cos(sage[label], out, q, k, v)
                except Exception as exc:  # reported in the row, never a crash of the whole table
                    r["note"] = f"cos ref not computed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            elif label.startswith("fp8-triton"):
                outputs[label] = out[:, :ACCURACY_QUERIES]
            del out
        if kind == "random":
            r = row("quantize")
            ms, peak = time_ms(lambda: quantize_attention_inputs(q, k, v, rotation, numerics), reps)
            r.update(ms=ms, peak_gib=peak / 2**30)
        # The PyTorch reference on the same quantized inputs (accuracy only).
        dq, dk, dv = dequantize_attention_inputs(leading_queries(quantized, ACCURACY_QUERIES), numerics)
        # In slices of REFERENCE_QUERY_SLICE queries: its fp32 score matrices then stay at ~3 GB each at 720p.
        reference = torch.cat([attention_with_pv_precision(dq[:, :, i : i + REFERENCE_QUERY_SLICE], dk, dv, scale, "e4m3")
                               for i in range(0, ACCURACY_QUERIES, REFERENCE_QUERY_SLICE)], dim=2)
        reference = reference.transpose(1, 2).to(torch.bfloat16)
        row("fp8-reference e4m3")["accuracy"][kind] = dataclasses.asdict(call_error(reference, exact))
        for label, out in outputs.items():
            row(label)["cos_ref"][kind] = _cos(out, reference) if label.endswith("e4m3") else None

    for kind in ("random", "outlier"):
        measure_inputs(kind)
        torch.cuda.empty_cache()

    bf16_ms = [rows[n]["ms"] for n in BF16_ROWS if rows[n]["ms"] is not None]
    quant_ms = rows["quantize"]["ms"]
    for r in rows.values():
        # Only a row timed here against a bf16 row timed here: a speed-up is never estimated.
        measured = r["ms"] is not None and bool(bf16_ms) and r["variant"] not in (*BF16_ROWS, "quantize")
        r["speedup"] = min(bf16_ms) / r["ms"] if measured else None
        fp8 = measured and r["variant"].startswith("fp8-triton")
        r["speedup_with_quant"] = min(bf16_ms) / (r["ms"] + quant_ms) if fp8 and quant_ms else None
    return list(rows.values())


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict], header: str) -> None:
    print(header)
    cols = ("shape", "variant", "ms", "TFLOPS", "speed-up", "+quant", "peak GiB",
            "cos rand", "relL1 rand", "RMSE rand", "cos outl", "relL1 outl", "RMSE outl", "cos ref rand",
            "cos ref outl")
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for r in results:
        acc = [fmt(r["accuracy"].get(kind, {}).get(m), spec)
               for kind in ("random", "outlier") for m, spec in (("cos_sim", ".6f"), ("rel_l1", ".2e"), ("rmse", ".2e"))]
        cells = [r["shape"], r["variant"], fmt(r["ms"], ".2f"), fmt(r["tflops"], ".0f"),
                 fmt(r["speedup"], ".2f") + ("x" if r["speedup"] else ""),
                 fmt(r["speedup_with_quant"], ".2f") + ("x" if r["speedup_with_quant"] else ""),
                 fmt(r["peak_gib"], ".2f"), *acc,
                 *(fmt(r.get("cos_ref", {}).get(kind), ".6f") for kind in ("random", "outlier"))]
        print(" | ".join(cells) + (f"   (not measured: {r['error']})" if r["error"] else "")
              + (f"   ({r['note']})" if r.get("note") else ""))
    print("speed-up: vs the faster measured bf16 SDPA row of the same shape; '-' where either was not measured.")


def versions() -> str:
    import importlib.metadata

    found = []
    for package in ("triton", "sageattention", "flash_attn_3"):
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")

    if not torch.cuda.is_available():
        print("gpu_attention: nothing measured: no CUDA device is visible. Run this on an NVIDIA GPU (an H100/H200 "
              "runs every row).")
        return 0
    header = (f"{torch.cuda.get_device_name(0)}, {datetime.date.today().isoformat()}, torch {torch.__version__}, "
              f"{versions()}, CUDA {torch.version.cuda}, python {platform.python_version()}; "
              f"B={BATCH} D={HEAD_DIM} bf16 (H per shape), median of {args.reps}")
    results = [r for name in shapes for r in measure_shape(name, args.reps)]
    print_table(results, header)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": results}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
