"""The whole tool for each family beyond Wan, one table row per family: lint/show/diff/check of the shipped recipe,
`report --pipeline tiny`, `calibrate` + `suggest` (the suggested recipe lints, compiles and selects by block list),
`patch` into a saved tiny pipeline + `runtime.load` picking the embedded plan, and the exports' refusals.

Every command runs through the real click CLI (CliRunner) on real diffusers tiny pipelines; plans are cut to
2 steps. The tests that build pipelines are slow (seconds each: 19 + 38, 60 or 28 blocks; LTX-2's 48 blocks of six
kinds, three forwards a step); one pipeline per family is shared by the module (`pipe`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from qcompiler.cli.main import cli
from qcompiler.families import get_family
from qcompiler.plan.format import load_plan

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
STEPS = 2  # calibrate; cut to 2 steps the shipped recipes are all native (first and last 15% of steps)
PLANNED_STEPS = 4  # report, patch: steps 1 and 2 quantized
runner = CliRunner()


@dataclass(frozen=True)
class Row:
    """One family: its name, the shipped recipe's stem in recipes/, and what its pipeline is called with."""

    family: str
    recipe: str
    video: bool  # takes num_frames (the family file's kinds see video tokens)
    call_keys: frozenset[str]  # arguments its model module passes (besides the common ones)
    no_call_keys: frozenset[str]  # arguments it must not pass
    # kinds no call of which can run quantized (a mask that is not padding): calibrate measures none of them
    always_masked: frozenset[str] = frozenset()

    def __str__(self) -> str:
        return self.family


IMAGE_ONLY = frozenset({"num_frames"})
VIDEO_EMBEDDINGS = frozenset({"prompt_embeds", "negative_prompt_embeds", "num_frames", "guidance_scale"})
ROWS = [
    Row("flux.1-dev", "flux1_dev", False, frozenset({"prompt_embeds", "pooled_prompt_embeds", "guidance_scale"}),
        IMAGE_ONLY | {"negative_prompt", "negative_prompt_embeds", "true_cfg_scale"}),
    Row("flux.1-schnell", "flux1_schnell", False, frozenset({"prompt_embeds", "pooled_prompt_embeds"}),
        IMAGE_ONLY | {"negative_prompt", "negative_prompt_embeds", "true_cfg_scale"}),
    Row("qwen-image", "qwen_image", False, frozenset({"prompt", "negative_prompt", "true_cfg_scale"}),
        IMAGE_ONLY | {"guidance_scale"}),
    Row("ltx-video", "ltx_video", True,
        frozenset({"prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                   "negative_prompt_attention_mask", "num_frames", "guidance_scale"}),
        frozenset({"true_cfg_scale"})),  # cross's text-padding mask is packed (runtime/masks.py): measured
    # CogVideoX: the base class's embeddings call (its module's encode_prompts), batched CFG
    Row("cogvideox-2b", "cogvideox_2b", True, VIDEO_EMBEDDINGS, frozenset({"true_cfg_scale", "prompt"})),
    Row("cogvideox-5b", "cogvideox_5b", True, VIDEO_EMBEDDINGS, frozenset({"true_cfg_scale", "prompt"})),
    # HunyuanVideo-1.5: text prompts (the pipeline encodes them with their masks), the guider's CFG scale
    Row("hunyuanvideo1.5-t2v-480p", "hunyuanvideo15_t2v_480p", True,
        frozenset({"prompt", "negative_prompt", "num_frames"}),
        frozenset({"guidance_scale", "true_cfg_scale", "prompt_embeds"})),
    # HunyuanVideo 1.0: guidance-distilled. Its refiner's mask keeps key 0 for padded rows (not a padding mask), but
    # the default prompt fills the tiny pipeline's 16 text tokens: no padding, so every refiner call is measured
    Row("hunyuanvideo-t2v-720p", "hunyuanvideo_t2v_720p", True,
        frozenset({"prompt", "guidance_scale", "prompt_template", "num_frames"}),
        frozenset({"negative_prompt", "true_cfg_scale"})),
    # LTX-2: text prompts (Gemma and the connectors encode them), video CFG; six kinds in one block list. Its text
    # kinds' mask is the connectors' all-zeros bias (a padding mask that drops no key): measured
    Row("ltx-2", "ltx2", True, frozenset({"prompt", "negative_prompt", "num_frames", "guidance_scale"}),
        frozenset({"prompt_embeds", "negative_prompt_embeds", "true_cfg_scale"})),
    # SkyReels-V2: Wan's embeddings call; diffusion forcing also passes `prompt=None` (positional, no default)
    Row("skyreels-v2-t2v-14b-540p", "skyreels_v2_t2v_540p", True, VIDEO_EMBEDDINGS,
        frozenset({"true_cfg_scale", "prompt"})),
    Row("skyreels-v2-df-14b-540p", "skyreels_v2_df_540p", True, VIDEO_EMBEDDINGS | {"prompt"},
        frozenset({"true_cfg_scale", "negative_prompt"})),
    # Mochi 1: text prompts, batched CFG; its processor calls SDPA once per sample (no mask reaches it)
    Row("mochi-1", "mochi1", True, frozenset({"prompt", "negative_prompt", "num_frames", "guidance_scale"}),
        frozenset({"true_cfg_scale", "prompt_embeds"})),
]
COMMON_CALL_KEYS = {"height", "width", "num_inference_steps", "generator", "output_type"}
EXPORT_TARGETS = {"vllm-omni": "vllm-omni", "mindiesd": "MindIE-SD 3.1.0", "xdit": "xDiT (xfuser 0.7.0)"}
# What each engine lacks for a model that is not Wan, as its refusal says it.
MISSING = {
    "vllm-omni": "nothing tags {model}'s attention calls",
    "mindiesd": "patterns for {model}'s Linear and attention names, and a MindIE-SD model whose attention calls "
                "fa_quant for them, are missing",
    "xdit": "how many forwards per step xDiT's runner for {model} makes",
}


def short_recipe(row: Row, folder: Path, steps: int = PLANNED_STEPS) -> Path:
    """The shipped recipe cut to `steps` denoising steps (its rules are relative: first/last %, edge blocks)."""
    text = (RECIPES_DIR / f"{row.recipe}.yaml").read_text()
    text, count = re.subn(r"(?m)^num_inference_steps: *\d+", f"num_inference_steps: {steps}", text)
    assert count == 1
    path = folder / f"{row.recipe}.yaml"
    path.write_text(text)
    return path


def invoke(*args: str):
    result = runner.invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


# -- torch-free: the compiler's commands --------------------------------------------------------------------------

@pytest.mark.parametrize("row", ROWS, ids=str)
def test_lint_show_diff_check_serve_the_family(row, tmp_path):
    recipe, plan_path = RECIPES_DIR / f"{row.recipe}.yaml", RECIPES_DIR / f"{row.recipe}.plan.json"
    family = get_family(row.family)
    lint = invoke("lint", "--strict", recipe)
    assert lint.exit_code == 0 and "0 error(s), 0 warning(s)" in lint.output, lint.output
    show = invoke("show", plan_path)
    assert show.exit_code == 0
    several = len(family.block_list_names) > 1
    for kind in family.kind_specs:  # one table per kind, labelled with its block list where there are several
        where = f"transformer / {kind.block_list}" if several else "transformer"
        assert f"\n{where} / {kind.name}-attention  (# fp8, . native)" in show.output
    assert invoke("diff", plan_path, recipe).exit_code == 0  # the committed plan is what the recipe compiles to
    shorter = short_recipe(row, tmp_path, steps=3)
    differ = invoke("diff", plan_path, shorter)
    assert differ.exit_code == 2 and "step" in differ.output  # different step counts: cannot compare, said why
    check = invoke("check", recipe)
    assert check.exit_code == 0, check.output
    (tmp_path / f"{row.recipe}.plan.json").write_text(plan_path.read_text())  # beside the 3-step recipe: stale
    stale = invoke("check", shorter)
    assert stale.exit_code == 1 and f"{row.recipe}.plan.json" in stale.output, stale.output


@pytest.mark.parametrize("target", sorted(EXPORT_TARGETS))
@pytest.mark.parametrize("row", ROWS, ids=str)
def test_exports_refuse_naming_what_is_missing(row, target):
    plan = load_plan(RECIPES_DIR / f"{row.recipe}.plan.json")
    model = plan.family.components[0].diffusers_class
    result = invoke("export", "--to", target, RECIPES_DIR / f"{row.recipe}.plan.json")
    assert result.exit_code == 1
    first = result.output.splitlines()[0]
    assert first.startswith(f"error: plan {plan.content_hash[:12]} ({row.family}: {model}) cannot be exported to "
                            f"{EXPORT_TARGETS[target]}: ")
    # what is missing, for this model: the Wan-only piece, the model's own module it cannot address, the way out
    assert "Wan-only" in first and MISSING[target].format(model=model) in first
    assert f"(such as {plan.family.module_path('transformer', plan.family.kinds[0], 0)})" in first
    assert "covers WanTransformer3DModel only; run this family's plans with qcompile's runtime" in first


@pytest.mark.parametrize("row", [r for r in ROWS if not r.video], ids=str)
def test_report_and_calibrate_refuse_frames_for_an_image_family(row, tmp_path):
    report = invoke("report", RECIPES_DIR / f"{row.recipe}.plan.json", "--num-frames", "9", "-o", tmp_path / "r")
    assert report.exit_code == 2
    assert f"{row.family} generates images, not video; drop --num-frames" in report.output
    calibrate = invoke("calibrate", "--family", row.family, "--steps", "1", "--num-frames", "5", "-o", tmp_path / "s")
    assert calibrate.exit_code == 2 and "drop --num-frames" in calibrate.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_a_model_module_without_call_arguments_is_refused_by_name():
    from runtime.models import support_for_family
    from runtime.models.base import ModelSupport, ModelSupportError

    # report/calibrate ask before building anything else (FrameSettings.resolved), so they refuse before running
    assert not ModelSupport().has_call_arguments()
    assert all(support_for_family(get_family(row.family)).has_call_arguments() for row in ROWS)
    with pytest.raises(ModelSupportError, match="has no call arguments .* add `call_kwargs` to its model module"):
        ModelSupport().call_kwargs(object(), height=16, width=16, num_frames=None, steps=1, guidance_scale=1.0,
                                   seed=0, max_length=None, output_type="latent")


# -- slow: the family's tiny pipeline ------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=ROWS, ids=str)
def row(request):
    return request.param


@pytest.fixture(scope="module")
def pipe(row):
    from runtime.tiny import build_tiny_pipeline

    return build_tiny_pipeline(row.family)


@pytest.mark.slow
def test_call_arguments_are_the_pipelines_own(row, pipe):
    from runtime.quality.pipelines import FrameSettings, call_kwargs, run_frames

    frames = FrameSettings().resolved(pipe, get_family(row.family, "tiny"))
    assert (frames.num_frames is not None) == row.video
    kwargs = call_kwargs(pipe, spec="tiny", seed=0, prompt="a red cube", steps=STEPS, frames=frames)
    assert COMMON_CALL_KEYS <= kwargs.keys() and row.call_keys <= kwargs.keys()
    assert not row.no_call_keys & kwargs.keys()
    out = run_frames(pipe, kwargs)  # decoded: (batch, frames, H, W, C), an image as one frame
    assert tuple(out.shape) == (1, frames.recorded_frames, frames.height, frames.width, 3)
    if not row.video:
        with pytest.raises(Exception, match="generates images: num_frames"):
            FrameSettings(num_frames=9).resolved(pipe, get_family(row.family, "tiny"))


@pytest.mark.slow
def test_report_on_the_tiny_pipeline(row, tmp_path):
    recipe = short_recipe(row, tmp_path)
    out = tmp_path / "report"
    result = invoke("report", recipe, "--pipeline", "tiny", "--backend", "reference", "--no-progress", "-o", out)
    assert result.exit_code == 0, result.output
    # (stderr is mixed in: the tiny tokenizers' one token per character truncates the prompt, and diffusers says so)
    assert result.output.splitlines()[-1].startswith(f"wrote {out / 'report.json'}, report.md and ")
    report = json.loads((out / "report.json").read_text())
    family = get_family(row.family, "tiny")
    assert report["plan"]["family"] == row.family and report["plan"]["variant"] == "tiny"
    assert report["execution"]["matches_plan"] and report["summary"]["calls"]["fp8"] > 0
    measured = report["measured"]
    frames = sample_frames(row)
    assert measured["num_frames"] == frames and report["summary"]["end_to_end"]["frames"] == frames
    # attention sizes as the kinds see them: a joint kind attends over text + image tokens on both sides
    for kind in family.kind_specs:
        seen = measured["attention_tokens"][f"transformer/{kind.name}"]
        if set(kind.query_tokens) == set(kind.key_tokens):
            # a joint kind: text + image tokens, more than the 16 text tokens alone
            assert seen["query"] == seen["kv"] >= (17 if len(kind.query_tokens) > 1 else 1)
        else:
            assert seen["query"] != seen["kv"]
    files = {h["file"] for h in report["files"]["heatmaps"]}
    assert files and all((out / name).is_file() for name in files)
    markdown = (out / "report.md").read_text()
    assert (f", {frames} frames, " if row.video else f"{measured['width']}x{measured['height']}, 1 frame, ") in markdown
    plan = load_plan_for(recipe)
    drawn = {h["kind"] for h in report["files"]["heatmaps"] if h["what"] == "plan"}
    assert drawn == {k for k in plan.attention_kinds if any(any(r) for r in plan.table("transformer", k))}
    assert {o["kind"] for o in report["files"]["omitted"]} == set(plan.attention_kinds) - drawn  # LTX: cross


@pytest.mark.slow
def test_an_all_native_report_is_bit_identical_and_names_the_familys_kinds(row, pipe, tmp_path):
    from runtime.quality.report import ReportOptions, build_report, write_report

    plan = load_plan_for(short_recipe(row, tmp_path, steps=STEPS))
    assert not any(any(any(r) for r in plan.table("transformer", k)) for k in plan.attention_kinds)
    report = write_report(build_report(plan, ReportOptions(backend="reference", progress=False), pipe=pipe), plan,
                          tmp_path / "report")
    assert report["summary"]["end_to_end"]["identical"] and report["execution"]["matches_plan"]
    omitted = {(o["component"], o["kind"]) for o in report["files"]["omitted"]}
    assert omitted == {("transformer", kind) for kind in plan.attention_kinds} and not report["files"]["heatmaps"]
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == json.loads(
        json.dumps(report))  # written as validated (schemas/report.schema.json)


def sample_frames(row: Row) -> int:
    """The frames of a run given no size: the model module's tiny default for a video family, 1 for images."""
    from runtime.models import support_for_family

    return support_for_family(get_family(row.family, "tiny")).sample_frames if row.video else 1


def load_plan_for(recipe: Path):
    from qcompiler import compile_recipe_text

    return compile_recipe_text(recipe.read_text(), name=recipe.name, variant="tiny")


@pytest.mark.slow
def test_calibrate_then_suggest_writes_a_recipe_by_block_list(row, tmp_path):
    from runtime.models import support_for_family

    sensitivity, suggested = tmp_path / "sensitivity.json", tmp_path / "suggested.yaml"
    calibrate = invoke("calibrate", "--family", row.family, "--steps", STEPS, "--backend", "reference",
                       "--no-progress", "-o", sensitivity)
    assert calibrate.exit_code == 0, calibrate.output
    data = json.loads(sensitivity.read_text())
    family = get_family(row.family, "tiny")
    assert data["measured"]["num_frames"] == sample_frames(row)
    masked = row.always_masked
    assert masked <= set(support_for_family(family).masked_kinds)
    assert {c["kind"] for c in data["cells"]} == set(family.kinds) - masked
    for kind in masked:
        assert f"not measured: {kind}: no call of it could run quantized" in calibrate.output
    assert ("not measured:" in calibrate.output) == bool(masked)
    suggest = invoke("suggest", sensitivity, "--fp8-flop-share", "0.5", "-o", suggested)
    assert suggest.exit_code == 0, suggest.output
    text = suggested.read_text()
    assert all(kind not in re.search(r"(?m)^attention_kinds: (.*)$", text).group(1) for kind in masked)
    lint = invoke("lint", "--strict", suggested)
    assert lint.exit_code == 0, lint.output
    compiled = invoke("compile", suggested, "--variant", "tiny", "-o", tmp_path / "plan.json")
    assert compiled.exit_code == 0, compiled.output
    chosen = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("    block_lists:")]
    named = {name.strip() for item in chosen for name in item.strip("[]").split(",")}
    assert named <= set(family.block_list_names)
    if len(family.block_list_names) > 1:  # rules of one list name it (Flux.1: the joint or the single blocks)
        assert named and "    attention_kinds:" not in text
        names = [n for n in re.findall(r"(?m)^  - name: (.*)$", text) if not re.search(r"-cells-\d+$", n)]
        # rules named after what they keep name its block list (long lists of cells are `native-cells-N`)
        assert all(any(block_list in n for block_list in named) for n in names)


@pytest.mark.slow
def test_patch_then_runtime_load_follows_the_embedded_plan(row, pipe, tmp_path):
    import runtime
    from runtime.quality.pipelines import FrameSettings, call_kwargs, run_frames
    from runtime.tiny import load_tiny_pipeline

    folder, plan_path = tmp_path / "pipe", tmp_path / "plan.json"
    pipe.save_pretrained(folder)
    assert invoke("compile", short_recipe(row, tmp_path), "--variant", "tiny", "-o", plan_path).exit_code == 0
    plan = load_plan(plan_path)
    patched = invoke("patch", folder, plan_path)
    assert patched.exit_code == 0, patched.output
    saved = json.loads((folder / "transformer" / "config.json").read_text())
    assert load_plan(saved["_qcompile_plan"]).content_hash == plan.content_hash
    loaded = load_tiny_pipeline(folder)
    # every component comes back offline as its own class (LTX-2: the audio VAE, vocoder and text connectors too)
    assert type(loaded) is type(pipe)
    assert ({name: type(c).__name__ for name, c in loaded.components.items() if c is not None}
            == {name: type(c).__name__ for name, c in pipe.components.items() if c is not None})
    handle = runtime.load(loaded, backend="reference")  # no plan: the embedded one
    try:
        assert handle.plan.content_hash == plan.content_hash
        frames = FrameSettings().resolved(loaded, plan.family)
        run_frames(loaded, call_kwargs(loaded, spec=str(folder), seed=0, prompt="a red cube", steps=PLANNED_STEPS,
                                       frames=frames))
        report = handle.report()
    finally:
        handle.unload()
    assert report.matches_plan(), report.to_dict()
    assert report.call_counts.get("reference", 0) > 0 and report.fallback_calls == 0


@pytest.mark.slow
def test_demo_runs_the_family_as_its_model_module_calls_it(row, tmp_path, capsys):
    from runtime.demo import main

    assert main([str(short_recipe(row, tmp_path))]) == 0
    printed = capsys.readouterr().out
    assert "executed table == plan: yes" in printed and "reference: " in printed
