"""fp8-triton against bf16 SDPA at Wan shapes on one NVIDIA GPU: time, TFLOPS, accuracy, peak memory.

    python benchmarks/gpu_attention.py [--reps 5] [--shapes self-480p,self-720p,cross-720p] [--json out.json]

Shapes (Wan2.x 14B: batch 1, 40 heads, head dim 128, bf16): self-attention over S = 32,760 tokens (480p) and
75,600 tokens (720p), cross-attention 75,600 queries x 512 text tokens.

Rows per shape:
- `sdpa-flash`, `sdpa-cudnn`: torch's scaled_dot_product_attention in bf16, forced onto one back end each.
- `fp8-triton e4m3` / `fp8-triton fp16`: the Triton kernel alone (inputs already quantized), per PV precision.
- `quantize`: the per-block quantization (with the Hadamard rotation) of q, k and v on its own, i.e. the PyTorch
  function the runtime calls (runtime.numerics.quantize_attention_inputs).
- `fp8-reference e4m3`: the PyTorch emulation (accuracy only; it is not a kernel).
Time is the median of `--reps` CUDA-event-timed calls after 2 warm-up calls; TFLOPS = 4 * B * H * Sq * Skv * D /
time. Speed-up is against the faster of the two bf16 rows of the same shape, and only when that row and the
row itself were measured; `fp8 + quant` adds the measured quantization time. Accuracy (cos-sim, rel-L1, RMSE as
in runtime.metrics) is against exact fp32 attention on the first ACCURACY_QUERIES queries (attention rows are
independent, so this is exact for them) on `random` (N(0, 1)) and `outlier` inputs (FlashAttention-3's: N(0, 1)
+ N(0, 10^2) * Bernoulli(0.001)). Peak memory is torch.cuda.max_memory_allocated during the timed calls
(inputs and every live tensor included).

Without a CUDA sm90+ GPU and triton it says so and exits 0: nothing is measured, nothing is printed as a figure.
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
from runtime.metrics import call_error  # noqa: E402
from runtime.numerics import (  # noqa: E402
    PV_PRECISIONS,
    Numerics,
    QuantizedAttentionInputs,
    dequantize_attention_inputs,  # noqa: E402
    quantize_attention_inputs,
)
from runtime.quant.rotation import get_rotation  # noqa: E402

BATCH, HEADS, HEAD_DIM = 1, 40, 128  # Wan2.x 14B attention
SHAPES = {  # name: (query tokens, key/value tokens)
    "self-480p": (32_760, 32_760),
    "self-720p": (75_600, 75_600),
    "cross-720p": (75_600, 512),
}
# Exact fp32 attention and the PyTorch reference run on this many leading queries (8 whole 128-token Q blocks):
# enough for stable error figures, small enough that fp32 over 75,600 keys stays quick and fits in memory.
ACCURACY_QUERIES = 1024
REFERENCE_QUERY_SLICE = 256
DEVICE = "cuda"
# fp32 exact attention: the memory-efficient back end takes fp32 and never materializes the score matrix.
EXACT_FP32_BACKEND = SDPBackend.EFFICIENT_ATTENTION
WARMUP_CALLS = 2
OUTLIER_PROBABILITY, OUTLIER_STD = 0.001, 10.0  # FlashAttention-3's outlier inputs


def inputs(kind: str, tokens_q: int, tokens_kv: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def one(tokens: int) -> torch.Tensor:
        x = torch.randn(BATCH, tokens, HEADS, HEAD_DIM, device=DEVICE, generator=g)
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


def measure_shape(name: str, reps: int) -> list[dict]:
    from runtime.kernels.triton_fp8_attention import fp8_attention

    tokens_q, tokens_kv = SHAPES[name]
    flops = 4 * BATCH * HEADS * tokens_q * tokens_kv * HEAD_DIM
    numerics = Numerics()
    rotation = get_rotation(DEVICE, torch.bfloat16, HEAD_DIM, numerics.rotation_seed)
    scale = 1.0 / math.sqrt(HEAD_DIM)
    rows: dict[str, dict] = {}

    def row(label: str) -> dict:
        return rows.setdefault(label, {"shape": name, "variant": label, "ms": None, "tflops": None, "peak_gib": None,
                                       "error": None, "accuracy": {}})

    def measure_inputs(kind: str) -> None:
        """Time (on `random` only) and score every row on one input distribution; its tensors die on return."""
        q, k, v = inputs(kind, tokens_q, tokens_kv)
        exact = sdpa(EXACT_FP32_BACKEND)(
            q[:, :ACCURACY_QUERIES].float(), k.float(), v.float())
        quantized = quantize_attention_inputs(q, k, v, rotation, numerics)
        candidates: dict[str, Callable[[], torch.Tensor]] = {
            "sdpa-flash": lambda: sdpa(SDPBackend.FLASH_ATTENTION)(q, k, v),
            "sdpa-cudnn": lambda: sdpa(SDPBackend.CUDNN_ATTENTION)(q, k, v),
        }
        for pv in PV_PRECISIONS:
            candidates[f"fp8-triton {pv}"] = (lambda pv=pv: fp8_attention(
                quantized, softmax_scale=scale, pv_precision=pv, out_dtype=torch.bfloat16))
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

    for kind in ("random", "outlier"):
        measure_inputs(kind)
        torch.cuda.empty_cache()

    bf16_ms = [rows[n]["ms"] for n in ("sdpa-flash", "sdpa-cudnn") if rows[n]["ms"] is not None]
    quant_ms = rows["quantize"]["ms"]
    for r in rows.values():
        measured = r["ms"] is not None and bf16_ms and r["variant"].startswith("fp8-triton")
        r["speedup"] = min(bf16_ms) / r["ms"] if measured else None
        r["speedup_with_quant"] = min(bf16_ms) / (r["ms"] + quant_ms) if measured and quant_ms else None
    return list(rows.values())


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict], header: str) -> None:
    print(header)
    cols = ("shape", "variant", "ms", "TFLOPS", "speed-up", "+quant", "peak GiB",
            "cos rand", "relL1 rand", "RMSE rand", "cos outl", "relL1 outl", "RMSE outl")
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for r in results:
        acc = [fmt(r["accuracy"].get(kind, {}).get(m), spec)
               for kind in ("random", "outlier") for m, spec in (("cos_sim", ".6f"), ("rel_l1", ".2e"), ("rmse", ".2e"))]
        cells = [r["shape"], r["variant"], fmt(r["ms"], ".2f"), fmt(r["tflops"], ".0f"),
                 fmt(r["speedup"], ".2f") + ("x" if r["speedup"] else ""),
                 fmt(r["speedup_with_quant"], ".2f") + ("x" if r["speedup_with_quant"] else ""),
                 fmt(r["peak_gib"], ".2f"), *acc]
        print(" | ".join(cells) + (f"   (not measured: {r['error']})" if r["error"] else ""))
    print("speed-up: vs the faster measured bf16 SDPA row of the same shape; '-' where either was not measured.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")

    reason = gpu_unavailable_reason()
    if reason is not None:
        print(f"gpu_attention: nothing measured: {reason}. Run this on an sm90+ NVIDIA GPU (H100/H200).")
        return 0
    import triton

    header = (f"{torch.cuda.get_device_name(0)}, {datetime.date.today().isoformat()}, torch {torch.__version__}, "
              f"triton {triton.__version__}, CUDA {torch.version.cuda}, python {platform.python_version()}; "
              f"B={BATCH} H={HEADS} D={HEAD_DIM} bf16, median of {args.reps}")
    results = [r for name in shapes for r in measure_shape(name, args.reps)]
    print_table(results, header)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": results}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
