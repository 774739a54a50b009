"""The vllm-omni plugin against vllm-omni's own gate code (executed from its wheel, see vllm_omni_wheel.py).

Default run: no vllm needed. Every cell of every shipped plan and of generated plans that vllm-omni's flags cannot
express comes out of vllm-omni's `_with_kv_cache_dtype` as "fp8" exactly where the plan says FP8 and "float"
elsewhere, and the executed table written per rank says so. Then each refusal. The real stack runs in
test_vllm_omni_stack.py (marker vllm_omni_stack).
"""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import pytest

from qcompiler.compile.compiler import compile_source, raise_for_findings
from qcompiler.errors import PlanError
from qcompiler.families import get_family
from qcompiler.plan.format import Plan, content_sha256, load_plan, write_plan
from qcompiler.targets.vllm_omni import NotExpressibleError, export_vllm_omni
from runtime.integrations import vllm_omni as plugin
from runtime.integrations.vllm_omni import vllm_omni_private as omni
from runtime.integrations.vllm_omni.plugin import CellGate
from tests.export.conftest import build_plan
from tests.integrations import vllm_omni_wheel as wheel

# vllm-omni 0.30 serves Wan pipelines: the shipped plans of other families are refused (test below).
RECIPES = sorted(p for p in (Path(__file__).resolve().parents[2] / "recipes").glob("*.plan.json")
                 if all(c.diffusers_class == "WanTransformer3DModel" for c in load_plan(p).family.components))

# Per-expert layers, a notch, FP8 cross-attention: nothing vllm-omni's one-rectangle flags can say.
GENERATED_RECIPE = textwrap.dedent("""\
    version: 1
    family: wan2.2-t2v-a14b
    num_inference_steps: 8
    dtype: fp8_e4m3_per_block
    numerics: {hadamard_rotation: true, rotation_seed: 425500}
    fallback: native
    attention_kinds: [self, cross]
    default: fp8
    rules:
      - {name: high-noise-edge-blocks, components: [transformer], layers: "0-2", precision: native}
      - {name: low-noise-notch, components: [transformer_2], steps: "6", layers: "10-12", precision: native}
      - {name: cross-native-early, attention_kinds: [cross], steps: "0-1", precision: native}
      - {name: edge-steps, steps: "last 1", precision: native}
""")


@pytest.fixture(scope="module")
def gate() -> wheel.OmniGate:
    try:
        return wheel.OmniGate(wheel.wheel_path())
    except wheel.RegistryUnreachable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def world(gate: wheel.OmniGate) -> wheel.WanWorld:
    return wheel.WanWorld(gate)


@pytest.fixture(autouse=True)
def no_plugin_left(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(plugin.PLAN_ENV, raising=False)
    yield
    plugin.deactivate()


def plan_file(plan: Plan, tmp_path: Path, name: str = "plan.json") -> Path:
    path = tmp_path / name
    write_plan(plan, path)
    return path


def activate(plan: Plan, tmp_path: Path, gate: wheel.OmniGate) -> plugin.PluginState:
    return plugin.activate(plan_file(plan, tmp_path), report_dir=str(tmp_path / "executed"),
                           vllm_omni_version=wheel.VERSION, step_source=gate.step)


def serve(world: wheel.WanWorld, plan: Plan, **config) -> dict[tuple[str, str, int, int], list[str | None]]:
    """Build vllm-omni's Wan pipeline for the plan's family, run one request, and return what vllm-omni's gate
    code passed to the kernel per (component, kind, step, layer)."""
    family = get_family(plan.family_name, plan.variant)
    pipe = world.pipeline(family, wheel.od_config(**config), list(plan.expert_schedule))
    world.sink.clear()
    pipe.forward(wheel.request_batch(plan.num_inference_steps))
    return sink_by_cell(world, pipe)


def sink_by_cell(world: wheel.WanWorld, pipe) -> dict[tuple[str, str, int, int], list[str | None]]:
    """The sink records (prefix, step, dtype) in call order; the pipeline's schedule says which expert ran."""
    by_cell: dict[tuple[str, str, int, int], list[str | None]] = {}
    for prefix, step, dtype in world.sink:
        kind = "self" if prefix.endswith("attn1") else "cross"
        by_cell.setdefault((pipe.schedule[step], kind, step, int(prefix.split(".")[1])), []).append(dtype)
    return by_cell


def expected_cells(plan: Plan) -> dict[tuple[str, str, int, int], list[str]]:
    """Each served cell once, "fp8" where the plan says FP8 and "float" elsewhere (vllm-omni 0.30's marker)."""
    cells = {}
    for step, component in enumerate(plan.expert_schedule):
        for kind in plan.attention_kinds:
            for layer, fp8 in enumerate(plan.table(component, kind)[step]):
                cells[(component, kind, step, layer)] = ["fp8" if fp8 else "float"]
    return cells


def generated_plans() -> list[Plan]:
    compiled = raise_for_findings(compile_source(GENERATED_RECIPE, name="generated.yaml"))
    plans = [compiled]
    rng = random.Random(20261201)
    for family, steps in (("wan2.2-i2v-a14b", 4), ("wan2.1-t2v-1.3b", 5)):
        fam = get_family(family)
        tables = {(c.name, kind): ["".join(rng.choice("01") for _ in range(fam.num_layers(c.name, kind))) for _ in range(steps)]
                  for c in fam.components for kind in fam.kinds}
        names = fam.component_names
        schedule = [names[0] if s < steps // 2 else names[-1] for s in range(steps)]
        plans.append(build_plan(tables, schedule, family=family))
    return plans


PLANS = [pytest.param(load_plan(p), id=p.name) for p in RECIPES] + [
    pytest.param(p, id=f"generated-{i}") for i, p in enumerate(generated_plans())]


# -- following the plan ----------------------------------------------------------------------------------


@pytest.mark.parametrize("plan", PLANS)
def test_vllm_omni_gate_follows_every_cell(plan: Plan, world: wheel.WanWorld, gate, tmp_path: Path):
    state = activate(plan, tmp_path, gate)
    assert serve(world, plan) == expected_cells(plan)
    report = state.log.last_report
    assert report is not None and report.matches_plan(), report.format()
    tagged = {c: len(layers) for c, layers in state.tagged.items()}
    assert tagged == {c: sum(plan.family.num_layers(c, k) for k in plan.attention_kinds) for c in plan.component_names}
    written, served = plugin.read_executed(tmp_path / "executed" / "rank0.json")
    assert written.matches_plan() and written.executed == report.executed
    assert served["plan_sha256"] == plan.content_hash and served["request_id"] == "req-1"


def test_without_the_plugin_vllm_omni_quantizes_every_self_call_and_no_cross_call(world: wheel.WanWorld):
    plan = generated_plans()[0]
    cells = serve(world, plan)
    assert all(v == (["fp8"] if kind == "self" else ["float"]) for (_, kind, _, _), v in cells.items())
    assert cells != expected_cells(plan)  # so the test above shows the plugin changed what vllm-omni runs


def test_generated_plans_are_beyond_vllm_omni_flags():
    for plan in generated_plans():
        with pytest.raises(NotExpressibleError):
            export_vllm_omni(plan)


def test_executed_table_counts_each_call_and_shows_a_deviation(world: wheel.WanWorld, gate, tmp_path: Path):
    plan = generated_plans()[1]
    state = activate(plan, tmp_path, gate)
    pipe = world.pipeline(get_family(plan.family_name), wheel.od_config(), list(plan.expert_schedule))
    pipe.forward(wheel.request_batch(plan.num_inference_steps))
    report = state.log.last_report
    layers = {c: plan.family.num_layers(c, "self") for c in plan.component_names}
    assert sum(report.call_counts.values()) == sum(layers[e] * 2 for e in plan.expert_schedule) == len(world.sink)
    assert report.schedule_matches_plan() and report.matches_plan()
    # A layer whose gate vllm-omni took back (as an untested version might) shows as a deviation, not as "ok".
    module = next(t.module for t in state.tagged["transformer"] if (t.kind, t.layer) == ("self", 0))
    module.__dict__.pop(omni.GATE_METHOD)
    pipe.forward(wheel.request_batch(plan.num_inference_steps))
    mismatches = state.log.last_report.mismatches()
    assert {(m.component, m.kind, m.layer, m.executed) for m in mismatches} == {("transformer", "self", 0, ".")}
    assert len(mismatches) == plan.expert_schedule.count("transformer")


# -- refusals --------------------------------------------------------------------------------------------


def test_no_plan_named_register_does_nothing(world: wheel.WanWorld, gate):
    plugin.register()
    assert plugin.active_state() is None
    pipe = world.pipeline(get_family("wan2.1-t2v-1.3b"), wheel.od_config(), ["transformer"] * 2)
    attn = pipe.transformer.blocks[0].attn1.attn
    assert omni.GATE_METHOD not in attn.__dict__ and attn._disable_kv_quant is False


def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    """An installed-looking vllm-omni distribution of `version` (what importlib.metadata reads)."""
    info = tmp_path / "site" / f"vllm_omni-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm-omni\nVersion: {version}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_register_refuses_untested_vllm_omni_naming_the_tested_versions(tmp_path, monkeypatch):
    plan = generated_plans()[1]
    monkeypatch.setenv(plugin.PLAN_ENV, str(plan_file(plan, tmp_path)))
    fake_distribution(tmp_path, monkeypatch, "0.28.0")
    with pytest.raises(plugin.PluginRefusal, match=r"vllm-omni 0\.28\.0 is not a version .*0\.30\.0.*Install "
                                                   r"vllm-omni==0\.30\.0"):
        plugin.register()
    assert plugin.active_state() is None
    monkeypatch.setenv(omni.ALLOW_UNTESTED_ENV, "1")
    plugin.register()
    assert plugin.active_state() is not None


def test_register_with_a_tested_vllm_omni_activates_from_the_environment(tmp_path, monkeypatch):
    plan = generated_plans()[1]
    monkeypatch.setenv(plugin.PLAN_ENV, str(plan_file(plan, tmp_path)))
    monkeypatch.setenv(plugin.REPORT_DIR_ENV, str(tmp_path / "tables"))
    fake_distribution(tmp_path, monkeypatch, omni.TESTED_VERSIONS[-1])
    plugin.register()
    state = plugin.active_state()
    assert state is not None and state.plan == plan and str(state.log.report_dir) == str(tmp_path / "tables")
    plugin.register()  # vllm-omni may call it again in the same process
    assert plugin.active_state() is state


def test_missing_vllm_omni_message():
    message = omni.version_problem(None)
    assert "not installed" in message and "unset QCOMPILE_VLLM_OMNI_PLAN" in message


def test_edited_plan_is_refused(tmp_path: Path, gate):
    path = plan_file(generated_plans()[1], tmp_path)
    data = json.loads(path.read_text())
    data["tables"]["transformer"]["self"][0] = "1" * len(data["tables"]["transformer"]["self"][0])
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="edited after compiling"):
        plugin.activate(path, report_dir=str(tmp_path), step_source=gate.step)


def test_a_plan_of_a_family_vllm_omni_does_not_serve_is_refused(world: wheel.WanWorld, gate, tmp_path: Path):
    plan = load_plan(Path(__file__).resolve().parents[2] / "recipes" / "flux1_dev.plan.json")
    activate(plan, tmp_path, gate)
    with pytest.raises(plugin.PluginRefusal, match="not a vllm-omni Wan transformer"):
        serve(world, plan)


def test_plan_whose_family_record_differs_is_refused(tmp_path: Path, gate):
    data = generated_plans()[1].to_dict()
    data["family"]["flow_shift"] = 1.0
    data["content_sha256"] = content_sha256(data)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(plugin.PluginRefusal, match="family record differs"):
        plugin.activate(path, report_dir=str(tmp_path), step_source=gate.step)


@pytest.mark.parametrize("flag, config", [
    ("--diffusion-kv-cache-skip-steps", {"skip_steps": {3}}),
    ("--diffusion-kv-cache-skip-layers", {"skip_layers": {0, 1}}),
])
def test_skip_lists_beside_a_plan_are_refused(flag, config, world, gate, tmp_path):
    plan = generated_plans()[1]
    activate(plan, tmp_path, gate)
    with pytest.raises(plugin.PluginRefusal, match=f"skip lists given beside a plan.*remove {flag}"):
        world.pipeline(get_family(plan.family_name), wheel.od_config(**config), list(plan.expert_schedule))


@pytest.mark.parametrize("dtype, said", [(None, "without --diffusion-kv-cache-dtype"),
                                         ("mxfp4", "kv_cache_dtype='mxfp4'")])
def test_fp8_plan_without_fp8_serving_flag_is_refused(dtype, said, world, gate, tmp_path):
    plan = generated_plans()[1]
    activate(plan, tmp_path, gate)
    with pytest.raises(plugin.PluginRefusal, match=f"{said}.*--diffusion-kv-cache-dtype fp8"):
        world.pipeline(get_family(plan.family_name), wheel.od_config(kv_cache_dtype=dtype), list(plan.expert_schedule))


def test_layer_or_head_count_mismatch_is_refused(world, gate, tmp_path):
    plan = generated_plans()[2]  # wan2.1-t2v-1.3b: 30 layers, 12 heads
    activate(plan, tmp_path, gate)
    other = get_family("wan2.2-ti2v-5b")  # 30 layers, 24 heads
    with pytest.raises(plugin.PluginRefusal, match="24 heads.*expects 30 layers, 12 heads"):
        world.pipeline(other, wheel.od_config(), list(plan.expert_schedule))


def test_step_count_differing_from_the_plan_is_refused(world, gate, tmp_path):
    plan = generated_plans()[1]
    activate(plan, tmp_path, gate)
    pipe = world.pipeline(get_family(plan.family_name), wheel.od_config(), list(plan.expert_schedule))
    with pytest.raises(plugin.PluginRefusal, match=r"asks for 6 denoising steps; the plan was compiled for 4\. "
                                                   r"Send num_inference_steps=4, or recompile .*--steps 6"):
        pipe.forward(wheel.request_batch(6))
    with pytest.raises(plugin.PluginRefusal, match="asks for 40 denoising steps"):  # vllm-omni's default
        pipe.forward(wheel.request_batch(None))


def test_engine_warmup_runs_native_and_writes_no_table(world, gate, tmp_path):
    plan = generated_plans()[1]
    state = activate(plan, tmp_path, gate)
    pipe = world.pipeline(get_family(plan.family_name), wheel.od_config(), list(plan.expert_schedule))
    world.sink.clear()
    pipe.forward(wheel.request_batch(2, warmup=True))  # the engine's start-up dummy run: 2 steps
    assert world.sink and {dtype for _, _, dtype in world.sink} == {"float"}
    assert state.log.warmup_calls == len(world.sink)
    assert not (tmp_path / "executed").exists()


def test_nothing_tagged_by_the_first_request_is_refused(world, gate, tmp_path):
    plan = generated_plans()[1]
    activate(plan, tmp_path, gate)

    class OtherPipeline(world.Wan22Pipeline):  # a model that is not one of vllm-omni's Wan pipelines
        _dit_modules = ["dit"]

    pipe = OtherPipeline([], wheel.od_config(), ["transformer"])
    pipe.dit = world.WanTransformer3DModel(2, 40, 128, wheel.od_config())
    with pytest.raises(plugin.PluginRefusal, match=r"runs untagged \(tagged: nothing\).*Unset the variable"):
        pipe.dit()


def test_a_model_built_after_the_first_request_still_trips(world, gate, tmp_path):
    plan = generated_plans()[1]
    state = activate(plan, tmp_path, gate)
    first = world.pipeline(get_family(plan.family_name), wheel.od_config(), list(plan.expert_schedule))
    first.forward(wheel.request_batch(plan.num_inference_steps))
    assert state.log.last_report.matches_plan()

    class OtherPipeline(world.Wan22Pipeline):  # built later in the same process, not one of vllm-omni's Wan pipelines
        _dit_modules = ["dit"]

    second = OtherPipeline([], wheel.od_config(), ["transformer"])
    second.dit = world.WanTransformer3DModel(2, 40, 128, wheel.od_config())
    world.sink.clear()
    with pytest.raises(plugin.PluginRefusal, match=r"layer 'blocks\.0\.attn1' runs untagged \(tagged: transformer: "
                                                   r"80 layers, transformer_2: 80 layers\).*Unset the variable"):
        second.dit()
    assert world.sink == []  # refused before vllm-omni's gate ran
    # The first model still follows the plan, call for call.
    first.forward(wheel.request_batch(plan.num_inference_steps, request_id="req-2"))
    assert state.log.last_report.matches_plan()
    plugin.deactivate()  # and without a plan in force, the later model runs vllm-omni's own policy again
    world.sink.clear()
    second.dit()
    assert world.sink == [(f"blocks.{i}.attn{n}", None, dtype) for i in range(2) for n, dtype in ((1, "fp8"),
                                                                                                    (2, "float"))]


def test_missing_expert_is_refused_at_the_first_request(world, gate, tmp_path):
    plan = generated_plans()[1]  # two experts
    activate(plan, tmp_path, gate)
    pipe = world.pipeline(get_family(plan.family_name), wheel.od_config(), ["transformer"] * 4,
                          components=["transformer"])  # boundary_ratio=0: vllm-omni builds one expert
    with pytest.raises(plugin.PluginRefusal, match="vllm-omni built no transformer_2.*boundary_ratio"):
        pipe.forward(wheel.request_batch(plan.num_inference_steps))


def test_unknown_step_runs_native_and_is_counted(world, gate, tmp_path):
    plan = generated_plans()[2]
    state = activate(plan, tmp_path, gate)
    pipe = world.pipeline(get_family(plan.family_name), wheel.od_config(), list(plan.expert_schedule))
    world.sink.clear()
    batch = wheel.request_batch(plan.num_inference_steps)
    batch.extra_block_call_without_step = True
    pipe.forward(batch)
    assert world.sink[-2:] == [("blocks.0.attn1", None, "float"), ("blocks.0.attn2", None, "float")]
    report = state.log.last_report
    assert state.log.unknown_step_calls == {"None": 2}
    assert any("2 attention calls at steps the plan does not cover ran native" in n for n in report.notes)
    assert report.matches_plan()


def test_deactivate_restores_vllm_omni_gate(world, gate, tmp_path):
    plan = generated_plans()[1]
    state = activate(plan, tmp_path, gate)
    pipe = world.pipeline(get_family(plan.family_name), wheel.od_config(), list(plan.expert_schedule))
    cross = pipe.transformer.blocks[0].attn2.attn
    assert cross._disable_kv_quant is False and isinstance(cross.__dict__[omni.GATE_METHOD], CellGate)
    state.deactivate()
    assert cross._disable_kv_quant is True and omni.GATE_METHOD not in cross.__dict__
    assert "forward" not in pipe.__dict__
