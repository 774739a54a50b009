"""qcompiler.targets.vllm_omni: every export decodes (by the independent decoder in conftest) back to the plan."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qcompiler import compile_recipe_text
from qcompiler.targets.rectangles import greedy_rectangle as _greedy_rectangle
from qcompiler.targets.vllm_omni import NotExpressibleError, export_vllm_omni, format_selector

from . import vllm_decoder as vllm
from .conftest import RECIPE, build_plan

LAYERS = 40  # wan2.2-i2v-a14b: both experts
HEADER = RECIPE.split("rules:")[0]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def recipe(rules: str, **replace: str) -> str:
    text = HEADER
    for old, new in replace.items():
        text = text.replace(old, new)
    return text + ("rules:\n" + rules if rules else "rules: []\n")


def schedule(num_steps: int, switch: int) -> list[str]:
    return ["transformer"] * switch + ["transformer_2"] * (num_steps - switch)


def assert_exact(plan, settings_) -> None:
    """The printed flags and the printed YAML both decode to exactly the plan's served FP8 cells."""
    planned = vllm.planned(plan)
    assert vllm.decode(plan, vllm.flags(settings_.to_flags())) == planned
    assert vllm.decode(plan, vllm.yaml_args(settings_.to_yaml())) == planned
    assert settings_.fp8_cells == len(planned) and settings_.given_up_cells == 0


# -- the selector notation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("indices", "text"),
    [([], ""), ([5], "5"), ([0, 1, 2, 37, 38, 39], "0-2,37-39"), ([3, 1, 2, 2], "1-3"), ([0, 2], "0,2"), ([7, 8], "7-8")],
)
def test_format_selector_is_compact_inclusive_ranges(indices, text):
    assert format_selector(indices) == text


def test_the_independent_decoder_follows_the_documented_grammar():
    # Whitespace and empty tokens ignored, inclusive ranges: the decoder is only as good as this.
    assert vllm.selector(" 0 - 2 ,, 5 , ") == {0, 1, 2, 5}
    assert vllm.selector("") == set()


@given(st.sets(st.integers(0, 200), max_size=60))
def test_format_selector_round_trips_through_the_decoder(indices):
    assert vllm.selector(format_selector(indices)) == indices


# -- compiled recipes -------------------------------------------------------------------------------


def test_rectangle_recipe_exports_exactly():
    plan = compile_recipe_text(recipe(
        '  - {name: edge-steps, steps: "0, last 1", precision: native}\n'
        '  - {name: edge-layers, layers: "0-2, 39", precision: native}\n'
    ))
    exported = export_vllm_omni(plan)
    assert exported.engine_args() == {
        "diffusion_kv_cache_dtype": "fp8",
        "diffusion_kv_cache_skip_steps": [0, 3],
        "diffusion_kv_cache_skip_layers": [0, 1, 2, 39],
        "boundary_ratio": 0.9,
        "flow_shift": 5.0,
    }
    assert exported.to_flags() == (
        '--diffusion-kv-cache-dtype fp8 --diffusion-kv-cache-skip-steps "0,3" --diffusion-kv-cache-skip-layers "0-2,39"'
        " --boundary-ratio 0.9 --flow-shift 5.0"
    )
    assert "  diffusion_kv_cache_skip_layers: [0, 1, 2, 39]\n" in exported.to_yaml()
    assert_exact(plan, exported)


def test_notch_recipe_is_refused_with_the_cells_named():
    # The brief's recipe: native only where edge steps AND layers 0-2 meet -- FP8 is not a rectangle.
    plan = compile_recipe_text(RECIPE)
    with pytest.raises(NotExpressibleError) as caught:
        export_vllm_omni(plan)
    error = caught.value
    assert set(error.forced_fp8) == {("transformer", "self", 0, layer) for layer in range(3)} | {
        ("transformer_2", "self", 3, layer) for layer in range(3)
    }
    assert error.never_fp8 == ()
    message = str(error)
    assert "  transformer/self step 0: layers 0-2" in message
    assert "  transformer_2/self step 3: layers 0-2" in message
    assert "--conservative" in message and "148 of the plan's 154 quantized cells" in message


def test_conservative_notch_recipe_skips_the_layers_and_gives_up_six_cells():
    plan = compile_recipe_text(RECIPE)
    exported = export_vllm_omni(plan, conservative=True)
    # 4 steps x 37 layers = 148 beats 2 steps x 40 layers = 80.
    assert exported.engine_args() == {"diffusion_kv_cache_dtype": "fp8", "diffusion_kv_cache_skip_layers": [0, 1, 2],
                                      "boundary_ratio": 0.9, "flow_shift": 5.0}
    assert (exported.fp8_cells, exported.planned_fp8_cells, exported.given_up_cells) == (148, 154, 6)
    decoded = vllm.decode(plan, vllm.yaml_args(exported.to_yaml()))
    assert decoded <= vllm.planned(plan) and len(decoded) == 148
    assert "gives up 6 of the plan's 154 quantized cells" in exported.to_yaml()


def test_the_shipped_recipe_exports_exactly():
    # recipes/wan22_i2v.yaml is the seed's setting: native edge steps x native edge blocks, both experts.
    from pathlib import Path

    from qcompiler import compile_recipe_file

    plan = compile_recipe_file(Path(__file__).parents[2] / "recipes" / "wan22_i2v.yaml")
    exported = export_vllm_omni(plan)
    assert exported.engine_args() == {"diffusion_kv_cache_dtype": "fp8", "diffusion_kv_cache_skip_steps": [0, 3],
                                      "diffusion_kv_cache_skip_layers": [0, 39], "boundary_ratio": 0.9,
                                      "flow_shift": 5.0}
    assert exported.given_up_cells == 0
    assert vllm.decode(plan, vllm.flags(exported.to_flags())) == vllm.planned(plan)


def test_one_layer_list_for_both_experts():
    # Layer 39 native in transformer_2 only: vllm-omni has one layer list for both experts.
    plan = compile_recipe_text(recipe(
        "  - {name: edge, steps: \"0, last 1\", precision: native}\n"
        "  - {name: first, layers: \"0\", precision: native}\n"
        "  - {name: low-noise-last, components: [transformer_2], layers: \"39\", precision: native}\n"))
    assert plan.expert_schedule[1:3] == ("transformer", "transformer_2")
    with pytest.raises(NotExpressibleError) as caught:
        export_vllm_omni(plan)
    assert caught.value.forced_fp8 == (("transformer_2", "self", 2, 39),)
    assert "  transformer_2/self step 2: layer 39\n" in str(caught.value)
    exported = export_vllm_omni(plan, conservative=True)
    assert exported.engine_args()["diffusion_kv_cache_skip_layers"] == [0, 39]
    assert exported.given_up_cells == 1
    assert vllm.decode(plan, vllm.flags(exported.to_flags())) <= vllm.planned(plan)


def test_cross_attention_fp8_cannot_be_expressed():
    plan = compile_recipe_text(recipe("  - {name: edge, steps: \"0\", precision: native}\n",
                                      **{"attention_kinds: [self]": "attention_kinds: [self, cross]"}))
    with pytest.raises(NotExpressibleError) as caught:
        export_vllm_omni(plan)
    assert caught.value.forced_fp8 == ()
    assert len(caught.value.never_fp8) == 3 * LAYERS
    assert all(kind == "cross" for _, kind, _, _ in caught.value.never_fp8)
    assert "  transformer/cross step 1: layers 0-39" in str(caught.value)
    assert "  transformer_2/cross steps 2-3: layers 0-39" in str(caught.value)
    exported = export_vllm_omni(plan, conservative=True)
    assert exported.given_up_cells == 3 * LAYERS
    assert vllm.decode(plan, exported.engine_args()) == {c for c in vllm.planned(plan) if c[1] == "self"}


def test_all_native_plan_exports_no_fp8_at_all():
    plan = compile_recipe_text(recipe("", **{"default: fp8": "default: native"}))
    exported = export_vllm_omni(plan, routing="any")
    assert not exported.fp8 and exported.engine_args() == {} and exported.to_flags() == ""
    assert "engine_args: {}" in exported.to_yaml()
    assert vllm.yaml_args(exported.to_yaml()) == {}
    assert "leave diffusion_kv_cache_dtype unset" in exported.to_yaml()
    # Pinned, the routing is still written: the plan's cells are those of the routing it was computed with.
    pinned = export_vllm_omni(plan)
    assert pinned.engine_args() == {"boundary_ratio": 0.9, "flow_shift": 5.0}
    assert pinned.to_flags() == "--boundary-ratio 0.9 --flow-shift 5.0"
    assert vllm.decode(plan, vllm.yaml_args(pinned.to_yaml())) == set()


def test_all_fp8_plan_exports_the_dtype_alone():
    plan = compile_recipe_text(recipe(""))
    exported = export_vllm_omni(plan)
    assert exported.to_flags() == "--diffusion-kv-cache-dtype fp8 --boundary-ratio 0.9 --flow-shift 5.0"
    assert_exact(plan, exported)


def test_rows_for_steps_an_expert_does_not_serve_are_ignored():
    # transformer serves steps 0-1; its rows for steps 2-3 (all FP8 here) never run under vllm-omni.
    rows = {
        ("transformer", "self"): ["0" * LAYERS, "1" * LAYERS, "1" * LAYERS, "1" * LAYERS],
        ("transformer_2", "self"): ["0" * LAYERS, "0" * LAYERS, "1" * LAYERS, "0" * LAYERS],
    }
    plan = build_plan(rows, schedule(4, 2))
    exported = export_vllm_omni(plan)
    assert exported.engine_args()["diffusion_kv_cache_skip_steps"] == [0, 3]
    assert_exact(plan, exported)


def test_notes_say_what_vllm_omni_cannot_honour():
    plan = build_plan({("transformer", "self"): ["1" * LAYERS]}, ["transformer"],
                      numerics={"rotation_seed": 1234, "k_mean_subtraction": True}, fallback="error")
    notes = "\n".join(export_vllm_omni(plan).notes)
    assert "seed 425500" in notes and "rotation_seed=1234" in notes
    assert "K-mean subtraction" in notes and "fallback=error" in notes
    assert export_vllm_omni(build_plan({("transformer", "self"): ["1" * LAYERS]}, ["transformer"])).notes == ()


# -- generated plans --------------------------------------------------------------------------------


def family_schedule(num_steps: int) -> list[str]:
    """The family's own expert schedule at this step count, where vllm-omni's scheduler agrees with it (a
    pinned export is exact on the routing vllm-omni takes; unserved rows are noise below)."""
    from qcompiler.compile.resolve import predict_expert_schedule
    from qcompiler.families import get_family

    from .routings import vllm_omni_unipc

    order = predict_expert_schedule(get_family("wan2.2-i2v-a14b"), num_steps)
    probe = build_plan({}, order)
    assume(vllm_omni_unipc(probe, 5.0, 0.9) == tuple(order))
    return order


@st.composite
def rectangle_plans(draw):
    """Any expressible plan: (steps - S) x (layers - L) on the served rows, noise on the unserved rows."""
    num_steps = draw(st.integers(1, 10))
    order = family_schedule(num_steps)
    skip_steps = draw(st.sets(st.integers(0, num_steps - 1)))
    skip_layers = draw(st.sets(st.integers(0, LAYERS - 1)))
    noise = st.text(alphabet="01", min_size=LAYERS, max_size=LAYERS)
    tables = {}
    for component in ("transformer", "transformer_2"):
        tables[(component, "self")] = [
            "".join("0" if step in skip_steps or layer in skip_layers else "1" for layer in range(LAYERS))
            if order[step] == component else draw(noise)
            for step in range(num_steps)
        ]
    return build_plan(tables, order)


@st.composite
def arbitrary_plans(draw, max_steps: int = 8):
    """Any plan: served rows drawn from a small palette (so rows often agree), sometimes FP8 cross cells."""
    num_steps = draw(st.integers(1, max_steps))
    order = family_schedule(num_steps)
    palette = draw(st.lists(st.text(alphabet="01", min_size=LAYERS, max_size=LAYERS), min_size=1, max_size=4))
    tables = {
        (component, kind): [draw(st.sampled_from(palette)) if kind == "self" or draw(st.booleans()) else "0" * LAYERS
                            for _ in range(num_steps)]
        for component in ("transformer", "transformer_2")
        for kind in ("self", "cross")
    }
    return build_plan(tables, order)


@SETTINGS
@given(rectangle_plans())
def test_every_rectangle_plan_exports_exactly(plan):
    exported = export_vllm_omni(plan)
    planned = vllm.planned(plan)
    assert vllm.decode(plan, vllm.flags(exported.to_flags())) == planned
    assert vllm.decode(plan, vllm.yaml_args(exported.to_yaml())) == planned
    # Never an index the model does not have (vllm-omni would silently ignore it).
    assert all(s < plan.num_inference_steps for s in exported.skip_steps)
    assert all(layer < LAYERS for layer in exported.skip_layers)


@SETTINGS
@given(arbitrary_plans())
def test_any_plan_exports_exactly_or_names_its_cells_and_conservative_is_safe(plan):
    planned = vllm.planned(plan)
    try:
        exported = export_vllm_omni(plan)
    except NotExpressibleError as error:
        assert error.cells
        for component, kind, step, layer in error.forced_fp8:
            assert kind == "self" and not plan.is_quantized(component, kind, step, layer)
            assert plan.expert_schedule[step] == component
        for cell in error.never_fp8:
            assert cell in planned and cell[1] == "cross"
        conservative = export_vllm_omni(plan, conservative=True)
        decoded = vllm.decode(plan, vllm.yaml_args(conservative.to_yaml()))
        assert decoded <= planned, "conservative export put FP8 on a cell the plan keeps native"
        assert conservative.fp8_cells == len(decoded)
        assert conservative.given_up_cells == len(planned) - len(decoded) > 0
    else:
        assert vllm.decode(plan, vllm.yaml_args(exported.to_yaml())) == planned


@SETTINGS
@given(arbitrary_plans(max_steps=6))
def test_conservative_finds_the_largest_rectangle(plan):
    self_rows = {}
    for cell in vllm.planned(plan):
        if cell[1] == "self":
            self_rows.setdefault(cell[2], set()).add(cell[3])
    best = 0
    for size in range(1, len(self_rows) + 1):
        for steps in itertools.combinations(self_rows, size):
            best = max(best, size * len(set.intersection(*(self_rows[s] for s in steps))))
    exported = export_vllm_omni(plan, conservative=True)
    assert exported.fp8_cells == best == len(vllm.decode(plan, exported.engine_args()))


def test_many_irregular_steps_still_give_a_safe_setting():
    # 30 distinct random rows make the exact search's candidate set explode, so the greedy search runs.
    rng = random.Random(6)
    rows = ["".join(rng.choice("0111") for _ in range(LAYERS)) for _ in range(30)]
    plan = build_plan({("transformer", "self"): rows}, schedule(30, 30))
    exported = export_vllm_omni(plan, conservative=True)
    decoded = vllm.decode(plan, vllm.flags(exported.to_flags()))
    assert decoded <= vllm.planned(plan) and len(decoded) == exported.fp8_cells > 0


@SETTINGS
@given(st.dictionaries(st.integers(0, 30), st.frozensets(st.integers(0, 12), min_size=1), min_size=1, max_size=12))
def test_greedy_rectangle_only_uses_fp8_cells(rows):
    steps, layers = _greedy_rectangle(rows)
    assert all(layers <= rows[step] for step in steps)
    assert len(steps) * len(layers) >= max(len(layers) for layers in rows.values())
