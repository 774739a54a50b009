"""Every export target, checked by its independent decoder over every routing the target can take.

For the shipped plans (recipes/*.plan.json) and generated plans: an export is exact (the decoder gives back the
plan, cell for cell, on every possible routing) or refused with cells named; --conservative never quantizes a
cell the plan keeps native on any possible routing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompiler import compile_recipe_text
from qcompiler.plan.format import Plan, content_sha256, load_plan
from qcompiler.targets.cells import NotExpressibleError, UnsupportedDtypeError, UnsupportedFamilyError
from qcompiler.targets.mindiesd import export_mindiesd
from qcompiler.targets.vllm_omni import export_vllm_omni
from qcompiler.targets.xdit import export_xdit

from . import mindiesd_decoder as mindiesd
from . import routings
from . import vllm_decoder as vllm
from . import xdit_decoder as xdit
from .conftest import build_plan

SHIPPED = sorted((Path(__file__).parents[2] / "recipes").glob("*.plan.json"))
WAN22_I2V = Path(__file__).parents[2] / "recipes" / "wan22_i2v.plan.json"
ROUTING_MODES = ("pinned", "any")
LAYERS = 40
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- one check per target: exact on every possible routing, or refused naming cells; conservative safe -----


def check_vllm_omni(plan: Plan, routing_mode: str) -> str:
    try:
        exported = export_vllm_omni(plan, routing=routing_mode)
    except NotExpressibleError as error:
        assert error.cells and all(f"  {c[0]}/{c[1]} " in str(error) for c in error.cells[:5])
        exported = export_vllm_omni(plan, routing=routing_mode, conservative=True)
        for args in (vllm.yaml_args(exported.to_yaml()), vllm.flags(exported.to_flags())):
            assert vllm.is_safe(plan, args), "conservative export quantizes a cell the plan keeps native"
        return "refused"
    for args in (vllm.yaml_args(exported.to_yaml()), vllm.flags(exported.to_flags())):
        assert vllm.mismatches(plan, args) == []
    return "exact"


def check_mindiesd(plan: Plan, routing_mode: str) -> str:
    reach = routings.every_split(plan) if routing_mode == "any" else [
        routings.diffusers_unipc(plan, plan.data["family"]["flow_shift"], plan.data["family"]["boundary_ratio"])
        if plan.data["family"]["boundary_ratio"] is not None else tuple(plan.expert_schedule)]

    def decoded_configs(exported):
        return (mindiesd.run_snippet(exported.to_python(), plan.component_names),
                mindiesd.configs_from_json(exported.to_json(), plan.component_names))

    try:
        exported = export_mindiesd(plan, routing=routing_mode)
    except NotExpressibleError as error:
        assert error.cells and all(f"  {c[0]}/{c[1]} " in str(error) for c in error.cells[:5])
        exported = export_mindiesd(plan, routing=routing_mode, conservative=True)
        for configs in decoded_configs(exported):
            for r in reach:
                assert mindiesd.decode(plan, configs, r) <= routings.planned_cells(plan, r)
        return "refused"
    for configs in decoded_configs(exported):
        for r in reach:
            assert mindiesd.decode(plan, configs, r) == routings.planned_cells(plan, r)
    return "exact"


def check_xdit(plan: Plan, routing_mode: str, cfg: bool = True, use_cfg_parallel: bool = False) -> str:
    def decoded(exported):
        line = exported.to_flags()
        for r in xdit.possible_routings(plan, line, routing_mode):
            yield r, xdit.decode_forwards(plan, line, r, cfg=cfg)

    try:
        exported = export_xdit(plan, routing=routing_mode, cfg=cfg, use_cfg_parallel=use_cfg_parallel)
    except NotExpressibleError as error:
        assert error.cells and all(f"  {c[0]}/{c[1]} " in str(error) for c in error.cells[:5])
        exported = export_xdit(plan, routing=routing_mode, cfg=cfg, use_cfg_parallel=use_cfg_parallel,
                               conservative=True)
        for r, forwards in decoded(exported):
            for cells in forwards:
                assert cells <= routings.planned_cells(plan, r)
        return "refused"
    for r, forwards in decoded(exported):
        per_step = len(forwards) // plan.num_inference_steps
        for step in range(plan.num_inference_steps):
            want = {c for c in routings.planned_cells(plan, r) if c[2] == step}
            for cells in forwards[step * per_step:(step + 1) * per_step]:
                assert cells == want, f"step {step}"
    return "exact"


CHECKS = {"vllm-omni": check_vllm_omni, "mindiesd": check_mindiesd, "xdit": check_xdit}


@pytest.mark.parametrize("routing_mode", ROUTING_MODES)
@pytest.mark.parametrize("target", sorted(CHECKS))
@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_plan_exports_exactly_or_is_refused_naming_cells(path, target, routing_mode):
    plan = load_plan(path)
    if any(c.diffusers_class != "WanTransformer3DModel" for c in plan.family.components):
        # The targets' settings exist for Wan only (tests/compiler/test_new_families.py checks the wording).
        with pytest.raises(UnsupportedFamilyError, match="Wan-only"):
            CHECKS[target](plan, routing_mode)
        return
    outcome = CHECKS[target](plan, routing_mode)
    # The shipped recipes are rectangles of self-attention, one layer set for both experts: exact where
    # layers can be chosen; xDiT has one backend for every layer, so their native edge blocks are refused.
    assert outcome == ("refused" if target == "xdit" else "exact")


def test_there_are_shipped_plans():
    assert len(SHIPPED) >= 6


# -- generated plans --------------------------------------------------------------------------------


def schedule(num_steps: int, switch: int) -> list[str]:
    return ["transformer"] * switch + ["transformer_2"] * (num_steps - switch)


@st.composite
def arbitrary_plans(draw, max_steps: int = 6):
    """Plans whose served rows come from a small palette (rows often agree), whole-step rows and cross FP8
    cells sometimes; the expert split is the family's (pinned) schedule or anything."""
    num_steps = draw(st.integers(1, max_steps))
    order = schedule(num_steps, draw(st.integers(0, num_steps)))
    palette = draw(st.lists(st.sampled_from(["1" * LAYERS, "0" * LAYERS])
                            | st.text(alphabet="01", min_size=LAYERS, max_size=LAYERS), min_size=1, max_size=3))
    cross_on = draw(st.booleans())
    tables = {
        (component, kind): [draw(st.sampled_from(palette)) if kind == "self" or (cross_on and draw(st.booleans()))
                            else "0" * LAYERS for _ in range(num_steps)]
        for component in ("transformer", "transformer_2")
        for kind in ("self", "cross")
    }
    return build_plan(tables, order)


@st.composite
def whole_step_plans(draw, max_steps: int = 8):
    """Plans quantized on whole steps (xDiT-shaped), cross native, following, or always on."""
    num_steps = draw(st.integers(1, max_steps))
    order = schedule(num_steps, draw(st.integers(0, num_steps)))
    on = [draw(st.booleans()) for _ in range(num_steps)]
    cross = draw(st.sampled_from(["native", "follow", "always"]))
    rows = {"self": ["1" * LAYERS if s else "0" * LAYERS for s in on],
            "cross": [("1" * LAYERS if {"native": False, "follow": s, "always": True}[cross] else "0" * LAYERS)
                      for s in on]}
    return build_plan({(c, k): rows[k] for c in ("transformer", "transformer_2") for k in rows}, order)


@SETTINGS
@given(arbitrary_plans(), st.sampled_from(ROUTING_MODES), st.sampled_from(sorted(CHECKS)))
def test_any_generated_plan_is_exact_or_refused_and_conservative_is_safe(plan, routing_mode, target):
    CHECKS[target](plan, routing_mode)


@SETTINGS
@given(whole_step_plans(), st.sampled_from(ROUTING_MODES), st.booleans(), st.booleans())
def test_whole_step_plans_export_exactly_to_xdit(plan, routing_mode, cfg, use_cfg_parallel):
    # Both experts carry the same rows here, so every routing agrees with the plan.
    assert check_xdit(plan, routing_mode, cfg=cfg, use_cfg_parallel=use_cfg_parallel) == "exact"


# -- routing: the issue's case ----------------------------------------------------------------------


def unserved_rows_differ_plan() -> Plan:
    """transformer_2 native on steps 2-25 (where the pinned schedule runs transformer), FP8 elsewhere."""
    fam_steps = 40
    order = schedule(fam_steps, 26)
    t1 = ["0" * LAYERS] * 2 + ["1" * LAYERS] * 38
    t2 = ["0" * LAYERS] * 26 + ["1" * LAYERS] * 14
    t1 = t1[:26] + ["1" * LAYERS] * 14
    return build_plan({("transformer", "self"): t1, ("transformer_2", "self"): t2}, order,
                      family="wan2.2-t2v-a14b")


def test_pinned_routing_is_written_and_any_routing_refuses_the_unserved_rows():
    plan = unserved_rows_differ_plan()
    assert plan.expert_schedule[25:27] == ("transformer", "transformer_2")
    pinned = export_vllm_omni(plan)
    args = pinned.engine_args()
    assert args["boundary_ratio"] == 0.875 and args["flow_shift"] == 12.0
    assert "--boundary-ratio 0.875 --flow-shift 12.0" in pinned.to_flags()
    assert "assumes requests send no flow_shift and no sample_solver" in pinned.to_yaml()
    assert vllm.mismatches(plan, vllm.yaml_args(pinned.to_yaml())) == []
    # Without the pinned values any split can happen: transformer_2 could serve steps 2-25, 960 cells.
    unpinned = {k: v for k, v in args.items() if k not in ("boundary_ratio", "flow_shift")}
    worst = max(len(decoded - planned) for _, decoded, planned in vllm.mismatches(plan, unpinned))
    assert worst == 24 * LAYERS == 960
    with pytest.raises(NotExpressibleError) as caught:
        export_vllm_omni(plan, routing="any")
    assert {(c, s) for c, _, s, _ in caught.value.forced_fp8} == {("transformer_2", s) for s in range(2, 26)}
    assert "  transformer_2/self steps 2-25: layers 0-39" in str(caught.value)
    assert check_vllm_omni(plan, "any") == "refused"


def test_the_exporter_predicts_vllm_omni_routing_like_its_scheduler():
    from qcompiler.targets.vllm_omni import vllm_omni_expert_schedule

    for family in ("wan2.2-i2v-a14b", "wan2.2-t2v-a14b"):
        for steps in (2, 3, 4, 8, 10, 17, 25, 40, 50):
            plan = build_plan({}, ["transformer"] * steps, family=family)
            fam = plan.data["family"]
            assert tuple(vllm_omni_expert_schedule(plan)) == routings.vllm_omni_unipc(
                plan, fam["flow_shift"], fam["boundary_ratio"]), (family, steps)


# -- dtypes ------------------------------------------------------------------------------------------


def with_dtype(plan: Plan, dtype: str) -> Plan:
    # Plans of the MX (issue 10) and INT8 (issue 14) dtypes: the schema on this branch does not list them yet.
    data = plan.to_dict()
    data["dtype"] = dtype
    data["content_sha256"] = content_sha256(data)
    return Plan.from_dict(data, trusted=True)


@pytest.mark.parametrize(("dtype", "vllm_name", "mindiesd_strategy", "xdit_backend"), [
    ("mxfp8_e4m3", "mxfp8", None, "AITER_MXFP8"),
    ("mxfp4_e2m1", "mxfp4", "MXFP4", "AITER_MXFP4"),
])
def test_mx_plans_export_by_dtype_name(dtype, vllm_name, mindiesd_strategy, xdit_backend):
    plan = with_dtype(load_plan(WAN22_I2V), dtype)
    exported = export_vllm_omni(plan)
    assert exported.engine_args()["diffusion_kv_cache_dtype"] == vllm_name
    assert f"--diffusion-kv-cache-dtype {vllm_name} " in exported.to_flags()
    if mindiesd_strategy is None:
        with pytest.raises(UnsupportedDtypeError, match="MXFP8 is not available online"):
            export_mindiesd(plan)
    else:
        assert export_mindiesd(plan).strategy == mindiesd_strategy
        assert check_mindiesd(plan, "pinned") == "exact"
    whole = with_dtype(build_plan({("transformer", "self"): ["1" * LAYERS]}, ["transformer"]), dtype)
    assert xdit_backend in export_xdit(whole).to_flags()


@pytest.mark.parametrize("export", [export_vllm_omni, export_mindiesd, export_xdit])
def test_int8_plans_are_refused_everywhere(export):
    plan = with_dtype(load_plan(WAN22_I2V), "int8_per_tensor")
    with pytest.raises(UnsupportedDtypeError) as caught:
        export(plan)
    assert "int8_per_tensor" in str(caught.value) and "runtime.load" in str(caught.value)


# -- MindIE-SD specifics ------------------------------------------------------------------------------


def test_mindiesd_snippet_passes_policy_defaults_and_states_the_seed():
    exported = export_mindiesd(load_plan(WAN22_I2V))
    text = exported.to_python()
    assert 'TimestepPolicyConfig(fa_default_strategy="FLOAT")' in text
    assert all('target="fa"' in line for line in text.splitlines() if "policy.register(" in line)
    assert 'fa_quant_type="MXFP4_DYNAMIC"' in text and "{" not in "".join(exported.configs[0].fa_layers)
    assert "seed 1234" in text and "rotation_seed=425500" in text
    assert "seed 1234" in exported.to_json()


ISSUE_18_RECIPE = """\
version: 1
family: wan2.2-i2v-a14b
num_inference_steps: 4
dtype: fp8_e4m3_per_block
numerics: {hadamard_rotation: true, rotation_seed: 425500}
fallback: native
attention_kinds: [self]
components: [transformer, transformer_2]
default: fp8
rules:
  - name: edge-steps
    steps: "0, last 1"
    precision: native
  - name: first-layer
    layers: "0"
    precision: native
  - name: last-layer-low-noise
    components: [transformer_2]
    layers: "39"
    precision: native
"""


def issue_18_plan(tmp_path) -> Plan:
    from qcompiler.compile.compiler import compile_path

    recipe = tmp_path / "issue18.yaml"
    recipe.write_text(ISSUE_18_RECIPE)
    result = compile_path(recipe)
    assert not result.errors, result.diagnostics
    return result.plan


def test_mindiesd_exports_one_config_per_expert_for_a_layer_native_in_one_expert_only(tmp_path):
    """Issue 18: first and last step native, layer 0 native, layer 39 native only in transformer_2. MindIE-SD
    quantizes each transformer with its own OnlineQuantConfig, so this is exact: one config per expert."""
    plan = issue_18_plan(tmp_path)
    assert plan.expert_schedule == ("transformer", "transformer", "transformer_2", "transformer_2")
    exported = export_mindiesd(plan)
    first, second = exported.config_of("transformer"), exported.config_of("transformer_2")
    assert first.components == ("transformer",) and second.components == ("transformer_2",)
    assert first.quantized_steps == (1,) and second.quantized_steps == (2,)
    assert first.fa_layers == tuple(f"blocks.{i}.attn1" for i in range(1, 40))
    assert second.fa_layers == tuple(f"blocks.{i}.attn1" for i in range(1, 39))
    assert exported.fp8_cells == exported.planned_fp8_cells == 39 + 38
    assert check_mindiesd(plan, "pinned") == "exact"
    text = exported.to_python()
    assert "quantize(pipe.transformer, online_config=online_config_transformer)" in text
    assert "quantize(pipe.transformer_2, online_config=online_config_transformer_2)" in text


def test_mindiesd_json_names_the_transformers_each_config_applies_to(tmp_path):
    """A consumer of the JSON reads which transformers each config is for: the old JSON had one config and no
    names, and applying it to pipe.transformer alone ran transformer_2's quantized steps native."""
    import json

    data = json.loads(export_mindiesd(issue_18_plan(tmp_path)).to_json())
    assert [entry["components"] for entry in data["configs"]] == [["transformer"], ["transformer_2"]]
    assert data["native_components"] == []
    assert "online_quant_config" not in data
    shipped = json.loads(export_mindiesd(load_plan(WAN22_I2V)).to_json())
    assert [entry["components"] for entry in shipped["configs"]] == [list(load_plan(WAN22_I2V).component_names)]


def test_mindiesd_leaves_out_an_expert_with_no_quantized_step():
    rows1 = ["0" * LAYERS, "1" * LAYERS, "1" * LAYERS, "0" * LAYERS]
    plan = build_plan({("transformer", "self"): rows1}, schedule(4, 2))
    exported = export_mindiesd(plan)
    assert [c.components for c in exported.configs] == [("transformer",)]
    assert exported.native_components == ("transformer_2",)
    assert "quantize(pipe.transformer_2" not in exported.to_python()
    assert check_mindiesd(plan, "pinned") == "exact"


def test_mindiesd_refuses_a_layer_native_on_one_step_of_an_expert_and_names_it():
    rows1 = ["0" * LAYERS, "1" * LAYERS, "1" * LAYERS, "0" * LAYERS]
    rows2 = ["0" * LAYERS, "1" * LAYERS, "1" * (LAYERS - 1) + "0", "1" * LAYERS]
    plan = build_plan({("transformer", "self"): rows1, ("transformer_2", "self"): rows2}, schedule(4, 2))
    with pytest.raises(NotExpressibleError) as caught:
        export_mindiesd(plan)
    assert caught.value.forced_fp8 == (("transformer_2", "self", 2, 39),)
    assert "  transformer_2/self step 2: layer 39" in str(caught.value)
    conservative = export_mindiesd(plan, conservative=True)
    assert conservative.given_up_cells == 1
    assert "blocks.39.attn1" not in conservative.config_of("transformer_2").fa_layers
    assert "blocks.39.attn1" in conservative.config_of("transformer").fa_layers


def test_mindiesd_fallback_patterns_keep_every_linear_and_no_attention_module():
    """On a real diffusers Wan transformer (with the I2V image embedder): each nn.Linear is kept at W16A16 and
    no attention module is, under stdlib fnmatch and under wcmatch (MindIE-SD uses it when installed)."""
    torch = pytest.importorskip("torch")
    from diffusers import WanTransformer3DModel

    from qcompiler.targets.mindiesd import FALLBACK_PATTERNS

    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=12,
                                  image_dim=16, added_kv_proj_dim=16, rope_max_seq_len=32)
    config = mindiesd.OnlineQuantConfig(fallback_layers={p: "W16A16" for p in FALLBACK_PATTERNS},
                                        fa_layers=("blocks.0.attn1",), fa_quant_type="MXFP4_DYNAMIC")
    names = dict(model.named_modules())
    linears = [n for n, m in names.items() if isinstance(m, torch.nn.Linear)]
    attention = [n for n, m in names.items() if type(m).__name__ == "WanAttention"]
    assert len(linears) > 100 and len(attention) == 24
    assert [n for n in linears if not mindiesd.keeps_w16a16(n, config)] == []
    assert [n for n in attention if mindiesd.keeps_w16a16(n, config)] == []
    import fnmatch
    for name in attention:
        assert not any(fnmatch.fnmatchcase(name, p) for p in FALLBACK_PATTERNS)


# -- xDiT specifics -----------------------------------------------------------------------------------


def test_xdit_two_entries_per_step_with_cfg_one_with_cfg_parallel():
    rows = ["0" * LAYERS, "1" * LAYERS, "1" * LAYERS, "0" * LAYERS]
    plan = build_plan({(c, "self"): rows for c in ("transformer", "transformer_2")}, schedule(4, 2))
    with_cfg = export_xdit(plan).to_flags()
    assert '--hybrid_attn_schedule "FLASH_3,FLASH_3,FLASH_3_FP8,FLASH_3_FP8,FLASH_3_FP8,FLASH_3_FP8,FLASH_3,FLASH_3"' in with_cfg
    assert "--cross_attention_backend FLASH_3" in with_cfg
    parallel = export_xdit(plan, use_cfg_parallel=True).to_flags()
    assert '"FLASH_3,FLASH_3_FP8,FLASH_3_FP8,FLASH_3"' in parallel and "--use_cfg_parallel" in parallel
    assert "per tensor" in "\n".join(export_xdit(plan).summary_lines())


def test_xdit_writes_no_flow_shift_when_both_experts_have_the_same_rows():
    """Issue 18: routing cannot change the result, so --flow_shift (which would override the user's) is left out."""
    rows = ["0" * LAYERS, "1" * LAYERS, "1" * LAYERS, "0" * LAYERS]
    plan = build_plan({(c, "self"): rows for c in ("transformer", "transformer_2")}, schedule(4, 2),
                      family="wan2.2-t2v-a14b")
    exported = export_xdit(plan)
    assert "--flow_shift" not in exported.to_flags() and exported.flow_shift is None
    assert "routing: does not matter" in "\n".join(exported.summary_lines())
    assert check_xdit(plan, "pinned") == "exact"  # the decoder then tries every split


def test_xdit_writes_flow_shift_when_exactness_depends_on_routing_and_says_it_is_the_runner_default():
    rows1 = ["0" * LAYERS, "1" * LAYERS, "1" * LAYERS, "0" * LAYERS]
    rows2 = ["0" * LAYERS, "0" * LAYERS, "1" * LAYERS, "0" * LAYERS]  # step 1 native only in transformer_2
    order = list(routings.diffusers_unipc(build_plan({}, ["transformer"] * 4, family="wan2.2-t2v-a14b"), 12.0, 0.875))
    assert order[1] == "transformer"
    plan = build_plan({("transformer", "self"): rows1, ("transformer_2", "self"): rows2}, order,
                      family="wan2.2-t2v-a14b")
    exported = export_xdit(plan)
    assert exported.to_flags().endswith("--flow_shift 12.0")
    summary = "\n".join(exported.summary_lines())
    assert "equals xDiT's runner default" in summary and "replaces any --flow_shift of your own" in summary
    assert check_xdit(plan, "pinned") == "exact"
    with pytest.raises(NotExpressibleError):
        export_xdit(plan, routing="any")


ONE_STEP_LOW_NOISE_ONLY_RECIPE = """\
version: 1
family: wan2.2-i2v-a14b
num_inference_steps: 1
dtype: fp8_e4m3_per_block
numerics: {hadamard_rotation: true, rotation_seed: 425500}
fallback: native
attention_kinds: [self]
components: [transformer, transformer_2]
default: fp8
rules:
  - {name: high-noise-native, components: [transformer], precision: native}
"""


def test_xdit_pins_the_routing_when_only_the_unserved_expert_quantizes():
    """A 1-step plan: the pinned routing runs transformer (all native), transformer_2's row is all FP8. With no
    schedule, the export used to print nothing, and another flow_shift (routing step 0 to transformer_2) left
    the plan's 40 cells native: the run is exact only with the plan's routing, so it is written."""
    plan = compile_recipe_text(ONE_STEP_LOW_NOISE_ONLY_RECIPE)
    assert plan.expert_schedule == ("transformer",)
    exported = export_xdit(plan)
    assert not exported.quantized and exported.fp8_cells == exported.planned_fp8_cells == 0
    assert exported.to_flags() == "--num_inference_steps 1 --flow_shift 5.0"
    summary = "\n".join(exported.summary_lines())
    assert "run xDiT without --use_hybrid_attn_schedule, with --num_inference_steps 1 --flow_shift 5.0" in summary
    assert "equals xDiT's runner default" in summary
    assert check_xdit(plan, "pinned") == "exact"
    # Routing any: transformer_2 may serve step 0, and one backend per forward cannot tell the experts apart.
    assert check_xdit(plan, "any") == "refused"
    assert export_xdit(plan, routing="any", conservative=True).to_flags() == ""
    # An all-native plan still prints nothing: no routing changes it.
    native = compile_recipe_text(ONE_STEP_LOW_NOISE_ONLY_RECIPE.replace("components: [transformer], ", ""))
    assert export_xdit(native).to_flags() == "" and check_xdit(native, "pinned") == "exact"


def test_xdit_cross_attention_following_the_schedule_needs_no_flag():
    rows = ["0" * LAYERS, "1" * LAYERS]
    plan = build_plan({(c, k): rows for c in ("transformer", "transformer_2") for k in ("self", "cross")},
                      schedule(2, 1))
    flags = export_xdit(plan).to_flags()
    assert "--cross_attention_backend" not in flags
    assert check_xdit(plan, "pinned") == "exact"


def test_xdit_refuses_partial_layers_naming_the_native_cells():
    rows = ["0" * LAYERS, "0" + "1" * (LAYERS - 1)]
    plan = build_plan({(c, "self"): rows for c in ("transformer", "transformer_2")}, schedule(2, 1))
    with pytest.raises(NotExpressibleError) as caught:
        export_xdit(plan)
    assert caught.value.forced_fp8 == (("transformer_2", "self", 1, 0),)
    conservative = export_xdit(plan, conservative=True)
    assert not conservative.quantized and conservative.given_up_cells == LAYERS - 1
