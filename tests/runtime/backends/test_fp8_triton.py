"""fp8-triton: the Triton kernel against a tile-by-tile PyTorch emulation (tight bound) and against the CPU
reference (documented bound), the custom op, availability, the fallback policy and a tiny pipeline.

Without CUDA the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1, set by tests/conftest.py before
diffusers imports triton; the interpreter's bug workarounds are then on). With CUDA the interpreter tests skip and the
`cuda`-marked tests run the same comparisons on the GPU, plus a check that the workarounds change no bit there.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (the dev extra pins it)")

import runtime  # noqa: E402 (after the importorskip)
from runtime.backends import Fp8TritonBackend, ReferenceBackend, resolve_quantized_backend  # noqa: E402
from runtime.backends.fp8_triton import fp8_triton_attention  # noqa: E402
from runtime.kernels import triton_fp8_attention as kernel  # noqa: E402
from runtime.numerics import Numerics, quantize_attention_inputs  # noqa: E402
from runtime.quant.rotation import randomized_hadamard  # noqa: E402
from runtime.tiny import run_tiny  # noqa: E402
from tests.runtime.conftest import T2V, expected_rows, recipe  # noqa: E402

interpreted = pytest.mark.skipif(not kernel.KERNEL_IS_INTERPRETED, reason="the kernel is compiled for a GPU here")
cuda = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(
    kernel.KERNEL_IS_INTERPRETED or not torch.cuda.is_available() or torch.cuda.get_device_capability(0) < (9, 0),
    reason="needs an sm90+ CUDA GPU and the compiled (not interpreted) kernel",
)

# Bounds (relative L2 error), measured under the interpreter with margin (docs/gpu.md lists the figures):
# kernel (fp32 out) vs the tile emulation: same arithmetic, only the order of sums inside a dot differs
# (measured <= 1.1e-7 with e4m3 P; <= 6.6e-6 with fp16 P, the interpreter's fp32 -> fp16 cast of P being the rest).
TILE_EMULATION_BOUND = 2e-5
# kernel vs fp8-reference (both fp32 out): the same quantized q/k/v; with e4m3 P the kernel rounds P against
# its running max, the reference against the row's final max, so single probabilities round differently
# (measured <= 2.1e-2 with e4m3 P, <= 1.7e-4 with fp16 P).
REFERENCE_BOUND = {"e4m3": 3e-2, "fp16": 5e-4}
# The accuracy goal: cos-sim vs exact attention within 1e-4 of the reference's on the same inputs
# (measured <= 3.5e-5).
COS_SIM_GAP = 1e-4

# (batch, tokens_q, tokens_kv, heads, head_dim): partial query and key/value blocks, batch > 1, both head
# dims, a key/value length spanning three 256-token blocks and one shorter than a tile (cross-attention-like).
SHAPES = [(2, 200, 300, 2, 64), (1, 130, 520, 1, 128), (1, 77, 16, 2, 64)]


def qkv(batch, tokens_q, tokens_kv, heads, head_dim, *, outliers=True, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, tokens_q, heads, head_dim, generator=g)
    k = torch.randn(batch, tokens_kv, heads, head_dim, generator=g)
    v = torch.randn(batch, tokens_kv, heads, head_dim, generator=g)
    if outliers:  # DiT-like: a few large channels in Q and K
        q[..., 3] *= 20
        k[..., 9] *= 10
    return q.to(device), k.to(device), v.to(device)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def cos_sim(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def exact_attention(q, k, v):
    out = torch.nn.functional.scaled_dot_product_attention(*(t.double().transpose(1, 2) for t in (q, k, v)))
    return out.transpose(1, 2)


def compare_on(device: str, shape, pv_precision: str) -> None:
    """Kernel vs tile emulation (tight) and vs fp8-reference (documented), with the plan's Hadamard rotation."""
    q, k, v = qkv(*shape, device=device)
    head_dim = shape[-1]
    numerics = Numerics(pv_precision=pv_precision)
    rotation = randomized_hadamard(head_dim, numerics.rotation_seed).float().to(device)
    quantized = quantize_attention_inputs(q, k, v, rotation, numerics)
    scale = 1.0 / math.sqrt(head_dim)
    got = kernel.fp8_attention(quantized, softmax_scale=scale, pv_precision=pv_precision, out_dtype=torch.float32)
    assert got.shape == q.shape and got.dtype == torch.float32 and torch.isfinite(got).all()

    tiles = kernel.emulate_tiles(quantized, softmax_scale=scale, pv_precision=pv_precision)
    assert rel_l2(got, tiles) < TILE_EMULATION_BOUND

    reference = ReferenceBackend(numerics).attend(q, k, v, rotation)
    assert rel_l2(got, reference) < REFERENCE_BOUND[pv_precision]
    exact = exact_attention(q, k, v)
    assert abs(cos_sim(got, exact) - cos_sim(reference, exact)) < COS_SIM_GAP
    assert rel_l2(got, exact) > 1e-4  # it really ran on quantized inputs


@interpreted
@pytest.mark.parametrize("pv_precision", ["e4m3", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_tile_emulation_and_reference_in_interpreter(shape, pv_precision):
    compare_on("cpu", shape, pv_precision)


@cuda
@needs_gpu
@pytest.mark.parametrize("pv_precision", ["e4m3", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_tile_emulation_and_reference_on_gpu(shape, pv_precision):
    compare_on("cuda", shape, pv_precision)


@cuda
@needs_gpu
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pv_precision", ["e4m3", "fp16"])
def test_interpreter_workarounds_change_no_bit_on_gpu(pv_precision, out_dtype):
    q, k, v = qkv(2, 300, 600, 4, 128, device="cuda")
    quantized = quantize_attention_inputs(q, k, v, None, Numerics())
    runs = [kernel.fp8_attention(quantized, softmax_scale=128**-0.5, pv_precision=pv_precision,
                                 out_dtype=out_dtype, interpreter_workarounds=flag) for flag in (False, True)]
    assert torch.equal(runs[0], runs[1])


@interpreted
def test_e4m3_rounding_in_fp32_matches_torch_cast():
    """The interpreter workaround for the fp32 -> e4m3 cast: rounding onto the e4m3 grid in fp32 arithmetic gives
    what torch's (correct, round-to-nearest-even) cast gives: every e4m3 value, every midpoint, random values."""
    import triton
    import triton.language as tl

    @triton.jit
    def round_kernel(X, Y, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(X + offs, mask=offs < n)
        tl.store(Y + offs, kernel._round_to_e4m3_grid(x), mask=offs < n)

    grid_values = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # 0 .. 448
    grid_values = grid_values[torch.isfinite(grid_values)].sort().values
    midpoints = (grid_values[1:] + grid_values[:-1]) / 2
    randoms = torch.rand(4096, generator=torch.Generator().manual_seed(0)) * 448
    tiny_values = torch.rand(1024, generator=torch.Generator().manual_seed(1)) * 2.0**-6  # subnormal range
    x = torch.cat([grid_values, midpoints, randoms, tiny_values]).contiguous()
    y = torch.empty_like(x)
    round_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    assert torch.equal(y, x.to(torch.float8_e4m3fn).float())


@interpreted
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_backend_attend_bsnd_in_and_out_in_the_input_dtype(dtype):
    q, k, v = (t.to(dtype) for t in qkv(1, 70, 90, 2, 64, seed=3))
    numerics = Numerics()
    rotation = randomized_hadamard(64, numerics.rotation_seed).to(dtype)
    got = Fp8TritonBackend(numerics).attend(q, k, v, rotation)
    assert got.shape == q.shape and got.dtype == dtype
    reference = ReferenceBackend(numerics).attend(q, k, v, rotation)
    assert rel_l2(got, reference) < REFERENCE_BOUND["e4m3"]


@interpreted
def test_custom_op_passes_opcheck_and_compiles_without_graph_breaks():
    q, k, v = qkv(1, 16, 16, 1, 64, seed=4)
    quantized = quantize_attention_inputs(q, k, v, None, Numerics())
    args = (quantized.query, quantized.query_scale, quantized.key, quantized.key_scale, quantized.value,
            quantized.value_scale, 0.125, "e4m3", torch.float32)
    torch.library.opcheck(fp8_triton_attention, args, test_utils="test_faketensor")
    # (opcheck's test_schema multiplies the inputs to detect mutation, and CPU torch has no fp8 multiply.)

    backend = Fp8TritonBackend(Numerics(hadamard_rotation=False))
    compiled = torch.compile(lambda a, b, c: backend.attend(a, b, c, None) * 2, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), backend.attend(q, k, v, None) * 2, rtol=0, atol=0)


def test_bad_kernel_inputs_are_named():
    q, k, v = qkv(1, 16, 16, 1, 64)
    quantized = quantize_attention_inputs(q, k, v, None, Numerics())
    with pytest.raises(ValueError, match="pv_precision 'bf16'"):
        kernel.fp8_attention(quantized, softmax_scale=0.125, pv_precision="bf16")
    wrong = quantize_attention_inputs(*qkv(1, 16, 16, 1, 32), None, Numerics())
    with pytest.raises(ValueError, match="head dim 32"):
        kernel.fp8_attention(wrong, softmax_scale=0.125)
    with pytest.raises(ValueError, match="query must be a BNSD float8_e4m3fn"):
        kernel.check_inputs(quantized.__class__(q, *[getattr(quantized, n) for n in (
            "query_scale", "key", "key_scale", "value", "value_scale")]), "e4m3", torch.bfloat16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reasons given without CUDA")
def test_availability_by_name_and_under_auto_without_cuda(monkeypatch):
    # By name, under the interpreter: available (tests); `auto` never takes the interpreter.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    backend, reason = resolve_quantized_backend("fp8-triton")
    assert isinstance(backend, Fp8TritonBackend) and reason == ""
    backend, reason = resolve_quantized_backend("auto")
    assert backend is None and "fp8-triton: no CUDA device is visible" in reason
    monkeypatch.delenv("TRITON_INTERPRET")
    backend, reason = resolve_quantized_backend("fp8-triton")
    assert backend is None and "no CUDA device is visible" in reason and "sm90" in reason
    assert "head dim 96" in Fp8TritonBackend().unsupported_reason(96)
    with pytest.raises(ValueError, match="fp8-triton got cpu tensors"):
        Fp8TritonBackend().attend(*qkv(1, 16, 16, 1, 64), None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback policy where fp8-triton cannot serve")
@pytest.mark.parametrize("fallback", ["error", "native"])
def test_fallback_policy_applies_when_fp8_triton_cannot_serve(t2v_pipe, compile_tiny, monkeypatch, fallback):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    plan = compile_tiny(recipe(T2V, steps=2, fallback=fallback))
    if fallback == "error":
        with pytest.raises(runtime.BackendUnavailableError, match="no CUDA device is visible"):
            runtime.load(t2v_pipe, plan, backend="fp8-triton")
        return
    with pytest.warns(RuntimeWarning, match="planned FP8 cells run native"):
        handle = runtime.load(t2v_pipe, plan, backend="fp8-triton")
    with handle:
        run_tiny(t2v_pipe, num_inference_steps=2, guidance_scale=1.0)
        report = handle.report()
    assert "no CUDA device is visible" in report.fallback_reasons["transformer"]
    assert report.fallback_calls == report.call_counts["native-fallback"] > 0 and not report.matches_plan()


# Half the layers native so the executed table has both kinds of cell; 2 steps without CFG keeps the number of
# interpreted kernel calls (one per FP8 cell) small.
ODD_LAYERS_NATIVE = """\
  - name: odd-layers
    layers: "1-/2"
    precision: native
"""


@pytest.mark.slow
@interpreted
def test_tiny_pipeline_runs_the_plan_on_fp8_triton(t2v_pipe, compile_tiny):
    plan = compile_tiny(recipe(T2V, steps=2, rules=ODD_LAYERS_NATIVE))
    with runtime.load(t2v_pipe, plan, backend="fp8-triton") as handle:
        out = run_tiny(t2v_pipe, num_inference_steps=2, guidance_scale=1.0)
        report = handle.report()
    assert torch.isfinite(out).all()
    assert report.executed["transformer"]["self"] == expected_rows(plan, "transformer", "self")
    assert report.matches_plan() and report.mismatches() == [] and report.fallback_calls == 0
    fp8_cells = sum(row.count("1") for row in plan.data["tables"]["transformer"]["self"])
    assert report.call_counts["fp8-triton"] == fp8_cells > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the benchmark's behaviour without a GPU")
def test_gpu_benchmark_says_nothing_was_measured_and_exits_0(monkeypatch, capsys):
    from benchmarks import gpu_attention

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert gpu_attention.main([]) == 0
    printed = capsys.readouterr().out
    assert "nothing measured: no CUDA device is visible" in printed and "x |" not in printed


@interpreted
def test_kernel_self_test_passes_on_a_working_kernel():
    # What `auto` and `fp8-triton` run once per GPU at load (here on CPU in the interpreter).
    from runtime.backends.fp8_triton import kernel_self_test_reason

    assert kernel_self_test_reason("cpu") is None
    # A device the kernel cannot run on gives a reason (the fallback policy then applies), not an exception.
    assert kernel_self_test_reason("meta").startswith("the fp8-triton kernel failed to run on meta")
