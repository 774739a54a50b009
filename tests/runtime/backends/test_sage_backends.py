"""The SageAttention formats (sage1_int8_fp16pv, sage2_int8_fp8pv_sm90) and backends (sage-v1, sage-sm90).

On CPU: recipes lint, compile and run on the tiny Wan pipeline with the reference (executed == plan); a recipe
asking for a Q/K rotation is refused (the library rotates none); both backends are refused here with their
reasons and `auto` follows the plan's fallback. CONTRACT ONLY: the call each backend makes is checked with a
recording stand-in for the library function (the stand-in computes with our CPU reference, so the test also shows
the backend and the reference make the same call); nothing here runs SageAttention's kernels. Tests marked
`cuda` compare the real kernels with the CPU references on a GPU.
"""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import runtime
from qcompiler.cli.main import cli
from runtime.backends.reference import ReferenceBackend
from runtime.backends.registry import resolve_quantized_backend
from runtime.backends.sage_cuda import (
    Sage1Backend,
    Sm90Backend,
    sage1_unavailable_reason,
    sm90_unavailable_reason,
)
from runtime.dispatch import _fp8_eligible
from runtime.errors import BackendUnavailableError
from runtime.numerics import Numerics
from runtime.quant.sage import SageReferenceError, sage1_sageattn, sage2_qk_int8_pv_fp8_cuda_sm90
from runtime.quant.sage_formats import sage1_attention_reference, sm90_attention_reference
from runtime.tiny import run_tiny
from tests.runtime.conftest import I2V, I2V_RULES, T2V, recipe

SAGE1 = "sage1_int8_fp16pv"
SM90 = "sage2_int8_fp8pv_sm90"
SAGE_DTYPES = (SAGE1, SM90)
BACKEND_OF = {SAGE1: "sage-v1", SM90: "sage-sm90"}


def _bsnd(dtype=torch.float32, tokens=200, heads=2, head_dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, tokens, heads, head_dim, generator=g) for _ in "qkv")
    return q.to(dtype), (k + 2).to(dtype), v.to(dtype)


# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("dtype", SAGE_DTYPES)
def test_a_sage_recipe_lints_compiles_and_runs_on_the_reference(dtype, i2v_pipe, compile_tiny, tmp_path):
    text = recipe(I2V, kinds="[self, cross]", rules=I2V_RULES, dtype=dtype)
    path = tmp_path / "sage.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(cli, ["lint", str(path)])
    assert result.exit_code == 0 and "warning[QC151]" in result.output and BACKEND_OF[dtype] in result.output
    plan = compile_tiny(text)
    assert plan.data["dtype"] == dtype
    assert plan.numerics["hadamard_rotation"] is False and plan.numerics["k_mean_subtraction"] is True
    assert Numerics.from_plan(plan).pv_precision == ("fp16" if dtype == SAGE1 else "e4m3")
    with runtime.load(i2v_pipe, plan, backend="reference") as handle:
        out = run_tiny(i2v_pipe)
        report = handle.report()
    assert torch.isfinite(out).all()
    assert report.matches_plan() and report.call_counts["reference"] > 0 and report.fallback_calls == 0


@pytest.mark.parametrize("dtype", SAGE_DTYPES)
def test_a_recipe_asking_sage_for_a_rotation_is_refused(dtype, tmp_path):
    path = tmp_path / "rotated.yaml"
    path.write_text(recipe(T2V, dtype=dtype, rotation=True), encoding="utf-8")
    result = CliRunner().invoke(cli, ["lint", str(path)])
    assert result.exit_code == 1, result.output
    assert f"error[QC154] dtype {dtype} takes numerics.hadamard_rotation = false only, the recipe sets true" in (
        result.output)
    assert "Traceback" not in result.output


def test_the_sage_formats_fix_granularity_and_export_nowhere():
    from qcompiler.formats import get_format

    sage1 = get_format(SAGE1)
    assert sage1.plan_numerics(None) == {"hadamard_rotation": False, "rotation_seed": 425500,
                                         "k_mean_subtraction": True}
    assert get_format(SM90).plan_numerics({"k_mean_subtraction": False}) == {
        "hadamard_rotation": False, "rotation_seed": 425500, "k_mean_subtraction": False}
    assert Numerics.for_dtype(SAGE1).pv_precision == "fp16" and Numerics.for_dtype(SM90).pv_precision == "e4m3"
    for spec in (sage1, get_format(SM90)):
        assert spec.speed_factor is None and spec.targets == {}
        assert "own runtime" in spec.target_refusal("vllm-omni")


def test_the_references_refuse_a_rotation():
    q, k, v = _bsnd()
    with pytest.raises(SageReferenceError, match="no Q/K rotation"):
        sage1_attention_reference(q, k, v, torch.eye(64), Numerics.for_dtype(SAGE1))


# ---------------------------------------------------------------------------------------------- selection


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals on a machine without CUDA")
def test_both_backends_are_refused_here_with_their_reasons():
    assert "no CUDA device is visible" in sage1_unavailable_reason()  # sageattention 1.0.6 is a dev dependency
    assert sm90_unavailable_reason().startswith("sageattention 1.0.6 is SageAttention 1")
    backend, why = resolve_quantized_backend("sage-v1", Numerics.for_dtype(SAGE1))
    assert backend is None and "sage-v1 runs SageAttention's kernels on an NVIDIA sm80+ GPU" in why
    backend, why = resolve_quantized_backend("sage-sm90", Numerics.for_dtype(SM90))
    assert backend is None and "no `sageattn_qk_int8_pv_fp8_cuda_sm90`" in why and "docs/gpu.md" in why
    backend, why = resolve_quantized_backend("sage-v1", Numerics.for_dtype(SM90))
    assert backend is None and why == f"backend 'sage-v1' cannot run {SM90} (it runs {SAGE1})"
    backend, why = resolve_quantized_backend("auto", Numerics.for_dtype(SAGE1))
    assert backend is None and "sage-v1: no CUDA device is visible" in why and "backend='reference'" in why


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks `auto` on a machine without CUDA")
@pytest.mark.parametrize("dtype", SAGE_DTYPES)
def test_auto_follows_the_plans_fallback_here(dtype, i2v_pipe, compile_tiny):
    strict = compile_tiny(recipe(I2V, dtype=dtype, fallback="error"))
    with pytest.raises(BackendUnavailableError, match=BACKEND_OF[dtype]):
        runtime.load(i2v_pipe, strict, backend="auto")
    lenient = compile_tiny(recipe(I2V, dtype=dtype, fallback="native"))
    with pytest.warns(RuntimeWarning, match=BACKEND_OF[dtype]):
        handle = runtime.load(i2v_pipe, lenient, backend="auto")
    with handle:
        run_tiny(i2v_pipe)
        report = handle.report()
    assert report.fallback_calls > 0 and not any(name.startswith("sage") for name in report.call_counts)


def test_masked_causal_and_scaled_calls_never_reach_a_quantized_backend():
    # The dispatch's eligibility test (runtime/dispatch.py): these calls run the stock attention.
    q = torch.zeros(1, 4, 2, 64)
    assert _fp8_eligible(q, None, 0.0, False, None, False)
    assert not _fp8_eligible(q, torch.ones(4, 4, dtype=torch.bool), 0.0, False, None, False)
    assert not _fp8_eligible(q, None, 0.0, True, None, False)
    assert not _fp8_eligible(q, None, 0.0, False, 0.5, False)


# ---------------------------------------------------------------------------------------------- call contract
# CONTRACT ONLY: a recording stand-in replaces the library function; no SageAttention kernel runs here.


class Recorder:
    """Records each call, then computes it with `compute` (our CPU reference of the same function)."""

    def __init__(self, compute):
        self.compute, self.calls = compute, []

    def __call__(self, q, k, v, **kwargs):
        self.calls.append(((q, k, v), kwargs))
        return self.compute(q.clone(), k.clone(), v.clone(), **kwargs)


# [v2] core.py:829-841 (github thu-ml/SageAttention d1a57a54), transcribed: SageAttention 2 is not installable here.
def _sm90_signature(q, k, v, tensor_layout="HND", is_causal=False, qk_quant_gran="per_thread", sm_scale=None,
                    pv_accum_dtype="fp32+fp32", smooth_k=True, return_lse=False, **kwargs):
    raise AssertionError("signature only")


def test_sage_v1_calls_sageattn_as_the_reference_does():
    import sageattention

    stand_in = Recorder(sage1_sageattn)
    numerics = Numerics.for_dtype(SAGE1)
    q, k, v = _bsnd(torch.bfloat16)
    k_before = k.clone()
    out = Sage1Backend(numerics, function=stand_in).attend(q, k, v, None)
    [((cq, ck, cv), kwargs)] = stand_in.calls
    assert kwargs == {"tensor_layout": "NHD", "is_causal": False, "sm_scale": 1 / math.sqrt(64), "smooth_k": True}
    # 1.0.6 smooths k in place: the backend hands it a copy, and the caller's k is untouched.
    assert cq is q and cv is v and ck is not k and torch.equal(ck, k) and torch.equal(k, k_before)
    # Every argument is a named parameter of the real sageattn (1.0.6 swallows unknown ones in **kwargs).
    parameters = inspect.signature(sageattention.sageattn).parameters
    assert set(kwargs) <= {n for n, p in parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD}
    assert torch.equal(out, ReferenceBackend(numerics).attend(q, k, v, None))
    assert out.dtype == q.dtype and out.shape == q.shape


def test_sage_v1_without_smoothing_passes_k_as_is():
    stand_in = Recorder(sage1_sageattn)
    q, k, v = _bsnd()
    Sage1Backend(Numerics.for_dtype(SAGE1, k_mean_subtraction=False), function=stand_in).attend(q, k, v, None)
    [((_, ck, _), kwargs)] = stand_in.calls
    assert ck is k and kwargs["smooth_k"] is False


def test_sage_v1_runs_sageattention_1_0_6s_own_kernels_in_the_interpreter():
    # The library's Triton kernels under TRITON_INTERPRET=1 (tests/conftest.py sets it without CUDA), through
    # sageattn's body minus its `assert q.is_cuda` (tests/runtime/test_sage_reference.py). fp32 in and out, so the
    # interpreter's truncating bf16 cast plays no part; the residue is the reference's GPU model of the fp16 P.V
    # accumulation (16-deep) against the interpreter's (one rounding per 64 keys): docs/sageattention.md, <= 3.9e-4.
    from tests.runtime.test_sage_reference import _run_sage1_kernels

    def sageattn_on_cpu(q, k, v, *, tensor_layout, is_causal, sm_scale, smooth_k):
        assert smooth_k and not is_causal and sm_scale == q.shape[-1] ** -0.5  # what _run_sage1_kernels runs
        return _run_sage1_kernels(q, k, v, tensor_layout, is_causal, q.dtype)[0]

    numerics = Numerics.for_dtype(SAGE1)
    q, k, v = _bsnd(torch.float32, tokens=200)
    real = Sage1Backend(numerics, function=sageattn_on_cpu).attend(q, k, v, None)
    ours = ReferenceBackend(numerics).attend(q, k, v, None)
    assert real.dtype == torch.float32 and (real - ours).abs().max() <= 1e-3 and _cos(real, ours) >= 0.99999


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sage_sm90_calls_the_sm90_kernel_as_the_reference_does(dtype):
    stand_in = Recorder(sage2_qk_int8_pv_fp8_cuda_sm90)
    numerics = Numerics.for_dtype(SM90)
    q, k, v = _bsnd(dtype, tokens=150, head_dim=128)
    out = Sm90Backend(numerics, function=stand_in).attend(q, k, v, None)
    [((cq, ck, cv), kwargs)] = stand_in.calls
    assert kwargs == {"tensor_layout": "NHD", "is_causal": False, "qk_quant_gran": "per_thread",
                      "sm_scale": 1 / math.sqrt(128), "pv_accum_dtype": "fp32+fp32", "smooth_k": True}
    # The kernel takes fp16/bf16 only: an fp32 model's call runs in bf16, and the output comes back in fp32.
    assert {cq.dtype, ck.dtype, cv.dtype} == {torch.bfloat16 if dtype == torch.float32 else dtype}
    inspect.signature(_sm90_signature).bind(cq, ck, cv, **kwargs)
    assert out.dtype == dtype and torch.equal(out, ReferenceBackend(numerics).attend(q, k, v, None))


@pytest.mark.parametrize("backend_class", [Sage1Backend, Sm90Backend])
def test_the_backends_refuse_rotations_grouped_heads_and_cpu_tensors(backend_class):
    q, k, v = _bsnd(torch.float16)
    backend = backend_class(function=Recorder(None))
    with pytest.raises(ValueError, match="rotates nothing"):
        backend.attend(q, k, v, torch.eye(64))
    with pytest.raises(ValueError, match="grouped-query attention is not supported"):
        backend.attend(q, k[:, :, :1], v[:, :, :1], None)
    with pytest.raises(ValueError, match="head dim 80"):
        backend.attend(*(torch.cat([x, x[..., :16]], dim=-1) for x in (q, k, v)), None)
    with pytest.raises(ValueError, match="kernels run on CUDA"):
        backend_class().attend(q, k, v, None)


# ---------------------------------------------------------------------------------------------- CLI (slow)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", SAGE_DTYPES)
def test_report_calibrate_and_suggest_on_the_tiny_pipeline(dtype, tmp_path):
    runner = CliRunner()
    path = tmp_path / "sage.yaml"
    path.write_text(recipe(I2V, dtype=dtype, kinds="[self, cross]", rules=I2V_RULES), encoding="utf-8")
    plan = tmp_path / "plan.json"
    result = runner.invoke(cli, [str(path), "--variant", "tiny", "-o", str(plan)])
    assert result.exit_code == 0, result.output
    outdir = tmp_path / "out"
    result = runner.invoke(cli, ["report", str(plan), "--pipeline", "tiny", "--backend", "reference", "-o",
                                 str(outdir), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((outdir / "report.json").read_text())
    assert report["plan"]["dtype"] == dtype and report["execution"]["matches_plan"]
    assert report["summary"]["calls"]["fp8"] > 0
    sensitivity = tmp_path / "sensitivity.json"
    result = runner.invoke(cli, ["calibrate", "--pipeline", "tiny", "--family", I2V, "--steps", "1",
                                 "--dtype", dtype, "--no-progress", "-o", str(sensitivity)])
    assert result.exit_code == 0, result.output
    data = json.loads(sensitivity.read_text())
    assert data["numerics"]["dtype"] == dtype and data["numerics"]["hadamard_rotation"] is False
    assert data["cells"] and all(-1.0 <= cell["cos_sim"]["worst"] <= 1.0 + 1e-9 for cell in data["cells"])
    suggested = tmp_path / "suggested.yaml"
    result = runner.invoke(cli, ["suggest", str(sensitivity), "--fp8-flop-share", "0.5", "-o", str(suggested)])
    assert result.exit_code == 0, result.output
    assert f"dtype: {dtype}" in suggested.read_text()
    lint = runner.invoke(cli, ["lint", str(suggested)])
    assert lint.exit_code == 0, lint.output


def test_calibrate_refuses_a_rotation_for_a_sage_dtype(tmp_path):
    result = CliRunner().invoke(cli, ["calibrate", "--pipeline", "tiny", "--family", I2V, "--steps", "1",
                                      "--dtype", SAGE1, "--hadamard", "-o", str(tmp_path / "s.json")])
    assert result.exit_code == 2 and "takes no Q/K rotation" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------- real kernels

COS_BOUND = 1e-4  # issue 21: the CPU reference within 1e-4 cos-sim of the real kernel


def _cos(a, b):
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


@pytest.mark.cuda
@pytest.mark.parametrize(("backend_class", "reference"), [(Sage1Backend, sage1_attention_reference),
                                                          (Sm90Backend, sm90_attention_reference)])
@pytest.mark.parametrize("tokens", [256, 300])
def test_the_real_kernel_matches_its_cpu_reference(backend_class, reference, tokens):
    reason = backend_class.environment_reason()
    if reason is not None:
        pytest.skip(reason)
    numerics = Numerics.for_dtype(backend_class.dtypes[0])
    q, k, v = _bsnd(torch.bfloat16, tokens=tokens, heads=4, head_dim=128)
    got = backend_class(numerics).attend(q.cuda(), k.cuda(), v.cuda(), None).cpu()
    want = reference(q, k, v, None, numerics)
    assert 1 - _cos(got, want) <= COS_BOUND


# ---------------------------------------------------------------------------------------------- benchmark


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the benchmark's behaviour without a GPU")
def test_the_gpu_benchmark_has_the_ulysses_shapes_and_measures_nothing_here(monkeypatch, capsys):
    from benchmarks import gpu_attention

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert {name: gpu_attention.SHAPES[name] for name in ("self-720p", "self-720p-u4", "self-720p-u8", "cross-720p")} == {
        "self-720p": (75_600, 75_600, 40), "self-720p-u4": (75_600, 75_600, 10),
        "self-720p-u8": (75_600, 75_600, 5), "cross-720p": (75_600, 512, 40)}
    assert gpu_attention.main(["--shapes", "self-720p-u8,cross-720p-u4"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("gpu_attention: nothing measured: no CUDA device is visible")
    assert "x |" not in printed and "TFLOPS" not in printed
