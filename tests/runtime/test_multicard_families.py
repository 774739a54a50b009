"""Ulysses context parallelism for the families other than Wan: one spawn of 2 CPU ranks (gloo, one thread each)
runs every check of every family, table-driven (tests/runtime/multicard_worker.py `FAMILIES`, `family_main`);
the one-process references are computed here while the ranks run.

Each family has two plans compiled from its shipped recipe for the tiny variant, 3 steps: "quantized" (every cell
of every kind quantized: `default: fp8`, no rules) and "shipped" (the recipe as it is: native edge steps and
blocks). Joint attention (Flux, Qwen-Image) concatenates [text, image] on each rank, so diffusers' all-to-all
hands the attention [text_0, image_0, text_1, image_1]: stock Ulysses attends in that order and differs from one
process by float summation order; quantized cells restore one process's order (runtime/dispatch.py), so an
all-quantized plan is bit-identical to one process and the shipped plan differs only through its native cells.
LTX-Video (self-attention quantized, cross-attention native in both plans: its recipe's `attention_kinds`) has no
joint attention: both plans are bit-identical to one process. Stock diffusers fails on it (its cross-attention
mask keeps all heads); with a plan loaded the mask goes on as one head (runtime/masks.py `one_head`).
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

import runtime
from qcompiler.families import get_family
from runtime.dispatch import _one_process_order, joint_kinds
from tests.runtime import multicard_worker as worker
from tests.runtime.models.family_runtime import compile_shipped, compile_variant

slow = pytest.mark.slow  # the tests that use `spawned`: one spawn of gloo ranks (~50 s on 2 shared cores)

WORLD = 2
RECIPES = {"flux.1-dev": "flux1_dev", "qwen-image": "qwen_image", "ltx-video": "ltx_video",
           "cogvideox-2b": "cogvideox_2b", "hunyuanvideo1.5-t2v-480p": "hunyuanvideo15_t2v_480p"}
# Stock Ulysses on the tiny Flux / Qwen-Image against one process (joint attention in the ranks' token order),
# measured 2026-12 on this CPU: 1.4e-7 relative L2 (Flux).
STOCK_ORDER_REL_L2 = 1e-5
# What differs between ranks and between one process and a rank in a report dict.
RANK_FIELDS = ("rank", "world_size", "parallel", "ranks")
PARALLEL = [f for f, spec in worker.FAMILIES.items() if spec["parallel"]]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """family -> (per-rank results, one-process references): one spawn of 2 ranks runs every family's checks
    (starting ranks costs more than the checks) while this process computes the references."""
    folder = tmp_path_factory.mktemp("families")
    plans: dict[str, dict] = {}
    for family, recipe in RECIPES.items():
        plans[family] = {"shipped": compile_shipped(recipe, folder / f"{recipe}.json", steps=worker.FAMILY_STEPS)}
        if worker.FAMILIES[family]["cp_plan"]:
            plans[family]["quantized"] = compile_variant(recipe, default="fp8", keep_rules=False,
                                                         steps=worker.FAMILY_STEPS)
    # LTX-Video with its masked cross-attention quantized too (the recipe's `fallback: error` kept)
    plans["ltx-video"]["masked_quantized"] = compile_variant("ltx_video", default="fp8", keep_rules=False,
                                                             kinds="[self, cross]", steps=worker.FAMILY_STEPS)
    context = mp.start_processes(
        worker.family_main, args=(WORLD, str(folder / "init"), str(folder),
                                  {f: {k: p.to_dict() for k, p in ps.items()} for f, ps in plans.items()}),
        nprocs=WORLD, start_method="spawn", join=False)
    refs: dict[str, dict] = {}
    for family in PARALLEL:
        pipe, refs[family] = worker.family_pipeline(family), {}
        refs[family]["stock"] = worker.run_family(family, pipe)
        for key in ("quantized", "shipped"):
            with runtime.load(pipe, plans[family][key], backend="reference") as handle:
                refs[family][key] = worker.run_family(family, pipe)
                refs[family][f"{key}_report"] = handle.report().to_dict()
    while not context.join(timeout=300):
        pass
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return lambda family: ([rank[family] for rank in ranks], refs.get(family, {}))


def _ok(result):
    assert not (isinstance(result, dict) and "error" in result), result.get("traceback")
    return result


def _without_rank(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in RANK_FIELDS}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@slow
@pytest.mark.parametrize("family", PARALLEL)
def test_quantized_attention_bit_identical_to_one_process_both_orders(spawned, family):
    results, refs = spawned(family)
    assert not torch.equal(refs["quantized"], refs["stock"])  # quantizing did change the output
    for rank_id, rank in enumerate(results):
        if worker.FAMILIES[family]["stock_parallel"]:  # LTX-Video's stock failure: test_ltx_video_ulysses_...
            assert 0 < _rel(_ok(rank["stock_cp"]), refs["stock"]) <= STOCK_ORDER_REL_L2 or \
                torch.equal(rank["stock_cp"], refs["stock"])
            assert torch.equal(_ok(rank["unloaded"]), rank["stock_cp"])  # unload under parallelism: stock CP again
        for order in ("quantized_after", "quantized_before"):
            run = _ok(rank[order])
            assert torch.equal(run["latents"], refs["quantized"]), (order, _rel(run["latents"], refs["quantized"]))
            report = runtime.execution_report.report_from_dict(run["report"])
            assert (report.rank, report.world_size, report.parallel) == (rank_id, WORLD, "ulysses=2")
            # the same cells, calls per cell and backend as one process: every rank runs every attention call
            assert _without_rank(run["report"]) == _without_rank(refs["quantized_report"]), order
            assert report.matches_plan() and not report.fallback_calls and report.call_counts["reference"] > 0


@slow
@pytest.mark.parametrize("family", PARALLEL)
def test_shipped_plan_under_ulysses_runs_the_one_process_table(spawned, family):
    results, refs = spawned(family)
    assert refs["shipped_report"]["call_counts"]["reference"] > 0  # 3 steps: the middle one quantized
    for rank in results:
        run = _ok(rank["shipped_after"])
        assert _without_rank(run["report"]) == _without_rank(refs["shipped_report"])
        assert run["report"]["matches_plan"]
        if not worker.has_joint_kinds(family):
            # LTX-Video: no joint attention, so native cells (the masked cross-attention included) attend in one
            # process's token order already: the shipped plan is bit-identical as it is.
            assert torch.equal(run["latents"], refs["shipped"]), _rel(run["latents"], refs["shipped"])
            continue
        # Its native cells are diffusers' stock Ulysses attention (the ranks' token order), and the quantized
        # cells after them round those tiny differences onto other FP8 grid points (measured 2026-12: 5.6e-5
        # relative L2 for Flux, 1.6e-3 for Qwen-Image against its whole quantization effect of 3.8e-3). With
        # diffusers' native attention made to attend in one process's order, the same plan is bit-identical:
        # every difference comes from the stock native cells, none from the quantized ones.
        assert _rel(run["latents"], refs["shipped"]) < _rel(refs["shipped"], refs["stock"])
        reordered = _ok(rank["shipped_native_reordered"])
        assert torch.equal(reordered["latents"], refs["shipped"])
        assert _without_rank(reordered["report"]) == _without_rank(refs["shipped_report"])
    assert torch.equal(results[0]["shipped_after"]["latents"], results[1]["shipped_after"]["latents"])


@slow
@pytest.mark.parametrize("family", ["flux.1-dev", "qwen-image", "ltx-video"])
@pytest.mark.parametrize("order", ["ring_after_load", "ring_before_load"])
def test_ring_is_refused_while_the_plan_has_quantized_cells(spawned, family, order):
    results, _ = spawned(family)
    for rank in results:
        error = rank[order]
        assert isinstance(error, dict) and error.get("error") == "ParallelLayoutError", error
        assert "ring=2" in error["message"] and "ulysses_degree" in error["message"]


@slow
def test_ltx_video_ulysses_fails_in_stock_diffusers_and_runs_with_qcompile_loaded(spawned):
    """diffusers 0.42.1's LTX-Video under Ulysses fails in its cross-attention: the text mask keeps all heads
    (prepare_attention_mask repeats it per head, viewed as [B, H, 1, T]; diffusers all-gathers it along the keys
    only) while each rank attends with H/N heads after the all-to-all. The stock pipeline raises, and again once
    a plan is unloaded. With a plan loaded, in either order, the mask (the same on every head) goes on as one head
    and the pipeline runs, its native cross-attention included: bit-identical to one process (tests above)."""
    results, refs = spawned("ltx-video")
    for rank in results:
        stock = rank["stock_cp"]
        assert isinstance(stock, dict) and stock.get("error") == "RuntimeError", stock
        assert "broadcast shape" in stock["message"] or "must match the size" in stock["message"], stock["message"]
        assert {k: rank["unloaded"][k] for k in ("error", "message")} == {k: stock[k] for k in ("error", "message")}
        for key, plan in (("quantized_after", "quantized"), ("quantized_before", "quantized"),
                          ("shipped_after", "shipped")):
            run = _ok(rank[key])
            assert torch.equal(run["latents"], refs[plan]), key
            cross = run["report"]["cells"]["transformer"]["cross"]  # [step][layer] -> backend -> calls
            assert {backend for row in cross for cell in row for backend in cell} == {"native"}, key


@slow
def test_ltx_video_masked_quantized_calls_under_ulysses_run_stock_as_fallback(spawned):
    """A plan quantizing LTX-Video's cross-attention, whose calls carry the text mask: under Ulysses they are not
    packed (packing runs in one process only) but run diffusers' stock attention with the mask as one head,
    counted as fallback whatever the policy (this recipe says `fallback: error`). So the latents are those of
    the self-attention-only plan in one process, and the report says why."""
    results, refs = spawned("ltx-video")
    for rank in results:
        run = _ok(rank["masked_quantized_after"])
        assert torch.equal(run["latents"], refs["quantized"])
        report = run["report"]
        assert report["fallback_calls"] > 0 and not report["matches_plan"]
        assert any("transformer / cross" in note and "under context parallelism" in note
                   for note in report["notes"]), report["notes"]
        cross = report["cells"]["transformer"]["cross"]
        assert {backend for row in cross for cell in row for backend in cell} <= {"native", "native-fallback"}


@slow
@pytest.mark.parametrize("family", ["cogvideox-2b", "hunyuanvideo1.5-t2v-480p"])
def test_no_cp_plan_refused_by_diffusers_and_then_by_load_naming_the_class(spawned, family):
    results, _ = spawned(family)
    cls = {"cogvideox-2b": "CogVideoXTransformer3DModel",
           "hunyuanvideo1.5-t2v-480p": "HunyuanVideo15Transformer3DModel"}[family]
    for rank in results:
        enable = rank["enable"]
        assert enable["error"] == "ValueError" and "_cp_plan" in enable["message"], enable
        load = rank["load"]  # the half-configured model diffusers leaves behind is refused, not run
        assert load["error"] == "ParallelLayoutError", load
        assert cls in load["message"] and "diffusers 0.42.1 has no `_cp_plan`" in load["message"]


@pytest.mark.parametrize(("family", "joint"), [
    ("flux.1-dev", {"joint", "single"}), ("qwen-image", {"joint"}), ("ltx-video", set()), ("wan2.2-i2v-a14b", set()),
])
def test_kinds_put_back_in_one_process_order_under_ulysses(family, joint):
    """Quantized cells of these kinds attend over [text, image] with both streams sharded (family data)."""
    assert joint_kinds(get_family(family, "tiny")) == joint


def test_one_process_order_gathers_each_stream_across_ranks():
    # 2 ranks, 2 text + 3 image tokens each: [t0 t1 i0 i1 i2 | t2 t3 i3 i4 i5] -> [t0 t1 t2 t3 i0 ... i5]
    tokens = torch.tensor([0, 1, 10, 11, 12, 2, 3, 13, 14, 15]).reshape(1, 10, 1, 1)
    assert _one_process_order(tokens, 2, 2).flatten().tolist() == [0, 1, 2, 3, 10, 11, 12, 13, 14, 15]
