"""Kernel-level accuracy of int8_per_tensor (the A2/A3 INT8 attention, CPU reference) on the same synthetic inputs
as benchmarks/attention_accuracy.py, and the INT8-P error floor against sequence length.

    .venv/bin/python benchmarks/int8_accuracy.py [--seq 1024,4096] [--floor-seq 1024,4096,16384,65536] [--json out.json]

Table 1: cosine similarity against exact fp32 attention for the INT8 variants: `naive` (per-tensor INT8 Q/K/V and
INT8 P, no transform), each transform alone (`+k-mean`, `+qk-rot`, `+v-rot`), all three, and all three with one
call per head (`scale_scope: head`). `bf16` for reference. Inputs: attention_accuracy.make_inputs (random,
fa3-outl, video, video-shared), head dim 128, batch 1.

Table 2: the INT8-P floor: all three transforms on `random` inputs (Q/K/V quantization error is smallest there,
so what remains is mostly P's 7-bit grid), cos-sim and relative L1 against S_kv. Only the first --floor-rows query
rows are computed (rows are independent; Q's per-tensor scale is then taken over those rows).

All INT8 numbers come from runtime/quant/int8.py with its inferred kernel semantics (multiply quant_scale1, rint,
row sum from unquantized P, 512-token KV tiles); nothing here ran on an NPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from attention_accuracy import HEAD_DIM, ROTATION_SEED, bf16, exact, make_inputs  # noqa: E402

from runtime.metrics import call_error  # noqa: E402
from runtime.numerics import Numerics  # noqa: E402
from runtime.quant.int8 import int8_attention_reference  # noqa: E402
from runtime.quant.rotation import get_rotation  # noqa: E402


def int8(k_mean: bool, qk_rot: bool, v_rot: bool, scope: str = "call") -> Callable[..., torch.Tensor]:
    numerics = Numerics.int8(k_mean_subtraction=k_mean, hadamard_rotation=qk_rot, v_rotation=v_rot,
                             rotation_seed=ROTATION_SEED, scale_scope=scope)
    rotation = get_rotation("cpu", torch.float32, HEAD_DIM, ROTATION_SEED) if qk_rot else None
    return lambda q, k, v: int8_attention_reference(q, k, v, rotation, numerics).float()


VARIANTS: list[tuple[str, Callable[..., torch.Tensor]]] = [
    ("bf16", bf16),
    ("naive", int8(False, False, False)),
    ("+k-mean", int8(True, False, False)),
    ("+qk-rot", int8(False, True, False)),
    ("+v-rot", int8(False, False, True)),
    ("all three", int8(True, True, True)),
    ("all three, per head", int8(True, True, True, "head")),
]


def table(distributions: list[str], seqs: list[int], heads: int, seeds: list[int]) -> list[dict]:
    rows = []
    print(f"{'inputs':<13} {'S':>6} " + " ".join(f"{name:>19}" for name, _ in VARIANTS))
    for distribution in distributions:
        for seq in seqs:
            found: dict[str, list[float]] = {name: [] for name, _ in VARIANTS}
            for seed in seeds:
                q, k, v = make_inputs(distribution, seq, heads, torch.Generator().manual_seed(seed))
                truth = exact(q, k, v)
                for name, variant in VARIANTS:
                    found[name].append(call_error(variant(q, k, v), truth).cos_sim)
            means = {name: statistics.fmean(values) for name, values in found.items()}
            rows.append({"inputs": distribution, "seq": seq, "heads": heads, "seeds": seeds, "cos_sim_mean": means})
            print(f"{distribution:<13} {seq:>6} " + " ".join(f"{means[name]:>19.5f}" for name, _ in VARIANTS),
                  flush=True)
    return rows


def floor(seqs: list[int], heads: int, query_rows: int, seed: int) -> list[dict]:
    variant = int8(True, True, True)
    rows = []
    print(f"{'S_kv':>7} {'cos-sim':>9} {'rel-L1':>9} {'seconds':>8}")
    for seq in seqs:
        q, k, v = make_inputs("random", seq, heads, torch.Generator().manual_seed(seed))
        q = q[:, :query_rows]
        started = time.perf_counter()
        error = call_error(variant(q, k, v), exact(q, k, v))
        elapsed = time.perf_counter() - started
        rows.append({"seq_kv": seq, "query_rows": q.shape[1], "cos_sim": error.cos_sim, "rel_l1": error.rel_l1})
        print(f"{seq:>7} {error.cos_sim:>9.5f} {error.rel_l1:>9.3e} {elapsed:>8.1f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", default="1024,4096", help="comma-separated sequence lengths for table 1")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--distributions", default="random,fa3-outl,video,video-shared")
    parser.add_argument("--seeds", default="0,1", help="input seeds; table 1 gives the mean over them")
    parser.add_argument("--floor-seq", default="1024,4096,16384,65536", help="S_kv values for table 2")
    parser.add_argument("--floor-rows", type=int, default=256, help="query rows computed in table 2")
    parser.add_argument("--json", help="also write both tables to this JSON file")
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"# int8_per_tensor CPU reference vs exact fp32 attention; head dim {HEAD_DIM}, {args.heads} heads, batch 1; "
          f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("# table 1: cos-sim mean over seeds " + args.seeds)
    rows = table(args.distributions.split(","), [int(s) for s in args.seq.split(",")], args.heads,
                 [int(s) for s in args.seeds.split(",")])
    print(f"# table 2: INT8-P floor, all three transforms, random inputs, first {args.floor_rows} query rows")
    floor_rows = floor([int(s) for s in args.floor_seq.split(",")], args.heads, args.floor_rows, 0)
    print(f"# {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"table": rows, "floor": floor_rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
