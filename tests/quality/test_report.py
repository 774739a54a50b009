"""`qcompile report` on the real tiny pipeline: cells, errors, end-to-end metrics, files."""

from __future__ import annotations

import json

import jsonschema
import pytest
from click.testing import CliRunner
from PIL import Image

from qcompiler.cli.main import cli
from qcompiler.cli.report import DEFAULT_THROUGHPUT_RATIO as CLI_DEFAULT_RATIO
from qcompiler.schemas import load_schema
from runtime.metrics import PSNR_CAP_DB
from runtime.quality.render import heatmap_size
from runtime.quality.report import DEFAULT_THROUGHPUT_RATIO
from tests.quality.conftest import MIXED_RECIPE, STEPS


def _ran(plan, observed):
    """Every (component, kind, step, layer) the pipeline ran, from the runtime's observed expert schedule."""
    return {
        (component, kind, step, layer)
        for step, seen in enumerate(observed)
        for component in plan.component_names
        if seen and component in seen.split("+")
        for kind in plan.attention_kinds
        for layer in range(plan.family.num_layers(component, kind))
    }


def test_report_has_one_cell_per_attention_site_that_ran(mixed_report, mixed_plan) -> None:
    report, _ = mixed_report
    cells = {(c["component"], c["kind"], c["step"], c["layer"]): c for c in report["cells"]}
    assert set(cells) == _ran(mixed_plan, report["execution"]["observed_schedule"])
    assert report["execution"]["matches_plan"] is True
    for (component, kind, step, layer), cell in cells.items():
        fp8 = mixed_plan.is_quantized(component, kind, step, layer)
        assert cell["planned"] == ("fp8" if fp8 else "native")
        assert cell["calls"] == 2  # classifier-free guidance: cond and uncond
        assert cell["fp8_calls"] == (2 if fp8 else 0)


def test_fp8_cells_have_nonzero_errors_and_native_cells_none(mixed_report) -> None:
    report, _ = mixed_report
    fp8 = [c for c in report["cells"] if c["planned"] == "fp8"]
    native = [c for c in report["cells"] if c["planned"] == "native"]
    assert fp8 and native
    for cell in fp8:
        assert 0.9 < cell["cos_sim"]["worst"] < 1.0
        assert cell["rel_l1"]["worst"] > 0 and cell["rmse"]["worst"] > 0
    assert all(c["cos_sim"] is None and c["rel_l1"] is None for c in native)
    summary = report["summary"]
    assert summary["per_call_error"]["cos_sim"]["worst"] == min(c["cos_sim"]["worst"] for c in fp8)
    assert summary["worst_steps"][0]["cos_sim_worst"] == summary["per_call_error"]["cos_sim"]["worst"]
    assert not summary["end_to_end"]["identical"] and summary["end_to_end"]["psnr_db"] < PSNR_CAP_DB


def test_shares_are_counted_from_the_calls_and_shapes_seen(mixed_report) -> None:
    summary = mixed_report[0]["summary"]
    cells = mixed_report[0]["cells"]
    assert summary["calls"]["fp8"] == sum(c["fp8_calls"] for c in cells)
    assert summary["calls"]["total"] == sum(c["calls"] for c in cells)
    assert summary["flops"]["total"] == sum(c["flops"] for c in cells) > 0
    assert 0 < summary["flops"]["share"] < 1


def test_all_native_plan_has_zero_error_and_capped_psnr(native_report) -> None:
    summary = native_report["summary"]
    assert summary["calls"]["fp8"] == 0 and summary["per_call_error"] is None
    e2e = summary["end_to_end"]
    assert e2e["identical"] is True and e2e["max_abs_diff"] == 0.0
    assert e2e["psnr_db"] == PSNR_CAP_DB == e2e["psnr_cap_db"]
    assert e2e["ssim"] == pytest.approx(1.0)
    assert summary["estimate"]["attention_time_saved"] == 0.0


def test_estimate_is_labelled_and_follows_the_formula(mixed_report) -> None:
    estimate = mixed_report[0]["summary"]["estimate"]
    assert estimate["kind"] == "estimate, not measured"
    assert estimate["throughput_ratio"] == DEFAULT_THROUGHPUT_RATIO == CLI_DEFAULT_RATIO == pytest.approx(5.43 / 6.81, abs=5e-4)
    assert estimate["attention_time_saved"] == pytest.approx(estimate["target_flop_share"] * (1 - DEFAULT_THROUGHPUT_RATIO))
    markdown = (mixed_report[1] / "report.md").read_text()
    assert "an estimate, not a measurement" in markdown


def test_json_validates_and_pngs_are_images_of_the_documented_size(mixed_report, mixed_plan) -> None:
    report, outdir = mixed_report
    written = json.loads((outdir / "report.json").read_text())
    jsonschema.Draft202012Validator(load_schema("report")).validate(written)
    assert written == json.loads(json.dumps(report))
    heatmaps = written["files"]["heatmaps"]
    drawn = {(item["component"], item["kind"], item["what"]) for item in heatmaps}
    left_out = {(item["component"], item["kind"], what) for item in written["files"]["omitted"] for what in item["what"]}
    # transformer_2 serves only the last step, where cross-attention is native: its cross error panel is left out.
    assert left_out == {("transformer_2", "cross", "error")} and not drawn & left_out
    assert len(drawn | left_out) == 2 * len(mixed_plan.component_names) * len(mixed_plan.attention_kinds)
    for item in heatmaps:
        with Image.open(outdir / item["file"]) as image:
            image.verify()
        with Image.open(outdir / item["file"]) as image:
            assert image.format == "PNG"
            assert image.size == heatmap_size(STEPS, 40)


def test_plan_heatmap_shows_fp8_and_native_cells(mixed_report) -> None:
    from runtime.quality.render import CELL, FP8_COLOR, LEFT, NATIVE_COLOR, TOP

    _, outdir = mixed_report
    with Image.open(outdir / "plan_transformer_self.png") as image:
        rgb = image.convert("RGB")
        # step 0, layer 0 is native (rule first-step-first-blocks); step 0, layer 10 is FP8.
        assert rgb.getpixel((LEFT + CELL // 2, TOP + CELL // 2)) == NATIVE_COLOR
        assert rgb.getpixel((LEFT + 10 * CELL + CELL // 2, TOP + CELL // 2)) == FP8_COLOR


def test_cli_report_on_a_recipe_with_the_tiny_pipeline(tmp_path) -> None:
    recipe = tmp_path / "mixed.yaml"
    recipe.write_text(MIXED_RECIPE, encoding="utf-8")
    outdir = tmp_path / "out"
    result = CliRunner().invoke(cli, ["report", str(recipe), "--pipeline", "tiny", "-o", str(outdir), "--no-progress",
                                      "--throughput-ratio", "0.5"])
    assert result.exit_code == 0, result.output
    assert "(estimate)" in result.output
    report = json.loads((outdir / "report.json").read_text())
    assert report["summary"]["estimate"]["throughput_ratio"] == 0.5
    assert report["summary"]["estimate"]["throughput_ratio_source"] == "given with --throughput-ratio"


@pytest.mark.slow
def test_cli_report_on_a_shipped_real_model_plan_runs_it_on_the_tiny_pipeline(repo_root, tmp_path) -> None:
    # The shipped plans are compiled for the real model; on the tiny pipeline the same tables are laid over the
    # tiny variant (same components, layers, kinds), and the report says so.
    outdir = tmp_path / "shipped"
    plan_path = repo_root / "recipes" / "wan22_i2v.plan.json"
    result = CliRunner().invoke(cli, ["report", str(plan_path), "--pipeline", "tiny", "-o", str(outdir), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((outdir / "report.json").read_text())
    assert (report["plan"]["variant"], report["plan"]["run_as_variant"]) == (None, "tiny")
    assert report["execution"]["matches_plan"] and report["summary"]["calls"]["fp8"] > 0
    assert "ran on the `tiny` variant" in (outdir / "report.md").read_text()


@pytest.mark.slow
def test_cli_report_on_a_saved_pipeline_folder(tiny_pipe, tmp_path) -> None:
    from runtime.tiny import save_tiny_pipeline

    folder = save_tiny_pipeline(tiny_pipe, tmp_path / "pipeline")
    recipe = tmp_path / "mixed.yaml"
    recipe.write_text(MIXED_RECIPE, encoding="utf-8")
    outdir = tmp_path / "out"
    result = CliRunner().invoke(cli, ["report", str(recipe), "--pipeline", str(folder), "-o", str(outdir),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((outdir / "report.json").read_text())
    # A recipe compiled for the real model, run on a folder holding the tiny variant: laid over it, and said.
    assert report["measured"]["pipeline"] == str(folder)
    assert (report["plan"]["variant"], report["plan"]["run_as_variant"]) == (None, "tiny")
    assert report["execution"]["matches_plan"]


def test_cli_report_errors_are_one_clear_line(tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["report", str(tmp_path / "missing.json"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no such plan file" in result.output and "Traceback" not in result.output
    recipe = tmp_path / "r.yaml"
    recipe.write_text(MIXED_RECIPE, encoding="utf-8")
    result = runner.invoke(cli, ["report", str(recipe), "--pipeline", str(tmp_path), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "model_index.json" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["report", str(recipe), "--height", "20", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "multiples of 16" in result.output


# -- issue 18, item 14: threads recorded, an error scale that spans the data, legends, empty panels, MXFP4 padding


def test_report_records_torch_threads_and_versions(mixed_report) -> None:
    import torch

    report, outdir = mixed_report
    measured = report["measured"]
    assert measured["threads"] == {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
    assert measured["versions"]["torch"] == torch.__version__ and "diffusers" in measured["versions"]
    assert set(measured["attention_tokens"]) == {f"{c}/{k}" for c in ("transformer", "transformer_2")
                                                 for k in ("self", "cross")}
    markdown = (outdir / "report.md").read_text()
    assert f"torch threads: {torch.get_num_threads()} intra-op" in markdown
    assert f"torch {torch.__version__}" in markdown and "depend on the thread count" in markdown


def test_error_colour_scale_tells_every_decade_apart_up_to_1() -> None:
    from runtime.quality.render import ERROR_SWATCHES, error_color

    colours = [error_color(cos) for cos, _ in ERROR_SWATCHES]
    assert len(set(colours)) == len(ERROR_SWATCHES) >= 7
    # The MXFP4 tiny report's cells (1 - cos 0.05 .. 0.39) no longer share the colour of 1 - cos = 1e-2.
    assert len({error_color(0.99), error_color(0.95), error_color(0.61)}) == 3
    assert error_color(-1.0) == error_color(0.0) and error_color(1.0) == error_color(1 - 1e-9)


def _legend_pixels(path, num_steps: int) -> set:
    from runtime.quality.render import CELL, TOP

    with Image.open(path) as image:
        rgb = image.convert("RGB")
        return {rgb.getpixel((x, y)) for x in range(rgb.width) for y in range(TOP + num_steps * CELL + 20, rgb.height)}


def test_legends_name_every_colour_drawn(mixed_report) -> None:
    from runtime.quality.render import ERROR_SWATCHES, FP8_COLOR, NATIVE_COLOR, NOT_RUN_COLOR, _pale, error_color

    _, outdir = mixed_report
    plan_legend = _legend_pixels(outdir / "plan_transformer_self.png", STEPS)
    assert {FP8_COLOR, NATIVE_COLOR, _pale(FP8_COLOR), _pale(NATIVE_COLOR)} <= plan_legend
    error_legend = _legend_pixels(outdir / "error_transformer_self.png", STEPS)
    assert {NATIVE_COLOR, NOT_RUN_COLOR, *(error_color(cos) for cos, _ in ERROR_SWATCHES)} <= error_legend


def test_plan_legend_names_the_plans_format() -> None:
    from runtime.quality.render import plan_legend

    words = [label for row in plan_legend("mxfp4_e2m1") for _, label in row]
    assert words[0] == "quantized (mxfp4_e2m1)" and not any("fp8" in w for w in words)
    assert plan_legend("fp8_e4m3_per_block")[0][0][1] == "FP8"


def test_all_native_panels_are_left_out_with_a_line_saying_so(native_report, native_plan, tmp_path) -> None:
    from runtime.quality.report import write_report

    report = write_report(native_report, native_plan, tmp_path)
    assert report["files"]["heatmaps"] == [] and not list(tmp_path.glob("*.png"))
    assert sorted((o["component"], o["kind"], tuple(o["what"])) for o in report["files"]["omitted"]) == sorted(
        (c, k, ("plan", "error")) for c in native_plan.component_names for k in native_plan.attention_kinds)
    markdown = (tmp_path / "report.md").read_text()
    assert "- transformer / self: no plan or error picture, native on every step and layer." in markdown
    jsonschema.Draft202012Validator(load_schema("report")).validate(json.loads((tmp_path / "report.json").read_text()))


def test_padding_note_only_for_mxfp4_on_sequences_far_below_the_block() -> None:
    from runtime.quality.report import padding_note

    short = {"transformer/self": {"query": 144, "kv": 144}, "transformer/cross": {"query": 144, "kv": 512}}
    note = padding_note("mxfp4_e2m1", short)
    assert note is not None and "multiple of 512" in note and "transformer/self 144 keys (72% padding)" in note
    assert "transformer/cross" not in note
    assert padding_note("fp8_e4m3_per_block", short) is None and padding_note("mxfp8_e4m3", short) is None
    assert padding_note("mxfp4_e2m1", {"transformer/self": {"query": 4000, "kv": 4000}}) is None


@pytest.mark.slow
def test_mxfp4_report_on_the_tiny_pipeline_says_its_error_comes_from_the_padding(tiny_pipe, tmp_path) -> None:
    from runtime.quality.report import ReportOptions, build_report, write_report
    from tests.quality.conftest import compile_tiny

    plan = compile_tiny(MIXED_RECIPE.replace("fp8_e4m3_per_block", "mxfp4_e2m1"), "mxfp4.yaml")
    report = write_report(build_report(plan, ReportOptions(progress=False, backend="reference"), pipe=tiny_pipe),
                          plan, tmp_path)
    assert any("attends to the padded zero keys" in note for note in report["summary"]["notes"])
    assert "**Note.** MXFP4 zero-pads every sequence" in (tmp_path / "report.md").read_text()
