"""The fallback a suggested recipe carries, as data flowing from `qcompile calibrate` to `qcompile suggest`.

`calibrate` records in the sensitivity file (format 2, `masks`) which kinds can carry an attention mask in the model
(the model support's `masked_kinds`, runtime/models/*.py) and, per kind, how many measured calls ran packed and how
many the quantized kernel could not take. `suggest` writes `fallback: native` (with a comment saying why) when a kind
the recipe quantizes can carry a mask, or had calls the kernel could not take, and `fallback: error` otherwise; a
format-1 file (no `masks`) is still read: `error`, with a comment that the masks are unknown.

The torch-free tests feed generated sensitivity data (tests/compiler/synthetic.py) through the real compiler and CLI;
the slow ones calibrate real tiny pipelines (HunyuanVideo-1.5, whose joint and refiner calls carry text masks, and
SkyReels-V2 diffusion forcing with block-causal masks the kernel cannot take).
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from click.testing import CliRunner

from qcompiler.cli.main import cli
from qcompiler.compile.compiler import compile_source
from qcompiler.schemas import committed_schema, load_schema
from qcompiler.suggest.cover import Budget, suggest_recipe
from qcompiler.suggest.sensitivity import SensitivityError, load_sensitivity, sensitivity_from_dict
from tests.compiler.synthetic import synthetic_sensitivity

runner = CliRunner()


def format2(family: str, masked: list[str], *, steps: int = 4, seed: int = 0, worst_cos=None,
            calls: dict[str, dict] | None = None) -> dict:
    """A format-2 sensitivity file of `family`: generated cells, `masked` as the model's masked kinds."""
    data = json.loads(json.dumps(dict(synthetic_sensitivity(steps=steps, seed=seed, family_name=family,
                                                            worst_cos=worst_cos).data)))
    kinds = data["family"]["attention_kinds"]
    data["sensitivity_format"] = 2
    data["masks"] = {"masked_kinds": masked,
                     "kinds": {kind: (calls or {}).get(kind, {"packed_calls": 0, "unservable_calls": 0})
                               for kind in kinds}}
    return data


def fallback_of(text: str) -> str:
    return re.search(r"(?m)^fallback: (\w+)$", text).group(1)


def fallback_comment(text: str) -> str:
    """The comment lines right above `fallback:`."""
    lines = text.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("fallback: "))
    start = end
    while lines[start - 1].startswith("# ") or lines[start - 1].startswith("#   "):
        start -= 1
    return "\n".join(lines[start:end])


def prose(comment: str) -> str:
    """Comment lines as one line of text, without the `#` prefixes."""
    return " ".join(word for line in comment.splitlines() for word in line.removeprefix("#").split())


def compiled_fallback(text: str, variant: str | None) -> str:
    result = compile_source(text, name="suggested.yaml", variant=variant)
    assert not result.errors, result.diagnostics
    return result.plan.fallback


def test_a_masked_family_gets_fallback_native_saying_which_kinds_carry_masks() -> None:
    data = format2("hunyuanvideo1.5-t2v-480p", ["joint", "refiner"],
                   calls={"joint": {"packed_calls": 6, "unservable_calls": 0},
                          "refiner": {"packed_calls": 0, "unservable_calls": 0}})
    sensitivity = sensitivity_from_dict(data)
    assert sensitivity.masked_kinds == ("joint", "refiner")
    suggestion = suggest_recipe(sensitivity, Budget("fp8_flop_share", 1.0))
    text = suggestion.text
    assert fallback_of(text) == "native" and suggestion.fallback == "native"
    assert compiled_fallback(text, sensitivity.variant) == "native"
    comment = fallback_comment(text)
    assert comment.startswith("# fallback: native: joint, refiner can carry an attention mask in this model.")
    assert "runs native instead, counted as fallback in the report" in prose(comment)
    joint_calls = sum(c.calls for c in sensitivity.cells.values() if c.kind == "joint")
    assert f"#   joint: 6 of {joint_calls} measured calls ran packed (padding mask), 0 could not be served." in comment


def test_only_the_masked_kinds_the_recipe_quantizes_count() -> None:
    # LTX-Video: cross carries the text mask. When every cross cell fails the budget, cross leaves the recipe's
    # scope (always native): nothing quantized carries a mask, so `error` stays, and a comment says why.
    data = format2("ltx-video", ["cross"], worst_cos=lambda component, kind, step, layer: 0.9 if kind == "cross"
                   else 0.9995)
    text = suggest_recipe(sensitivity_from_dict(data), Budget("min_cos", 0.999)).text
    assert re.search(r"(?m)^attention_kinds: \[self\]$", text)
    assert fallback_of(text) == "error"
    assert prose(fallback_comment(text)) == ("fallback: error: cross can carry an attention mask in this model but is not "
                                      "quantized here; no kind the recipe quantizes carries one.")
    text = suggest_recipe(sensitivity_from_dict(format2("ltx-video", ["cross"])), Budget("min_cos", 0.9)).text
    assert re.search(r"(?m)^attention_kinds: \[.*cross.*\]$", text) and fallback_of(text) == "native"


def test_calls_the_kernel_could_not_take_make_it_native_even_undeclared() -> None:
    reason = "an attention mask that is not a padding mask: a query row keeps keys that others drop"
    data = format2("wan2.1-t2v-1.3b", [], calls={"self": {"packed_calls": 0, "unservable_calls": 3,
                                                          "unservable_reason": reason}})
    text = suggest_recipe(sensitivity_from_dict(data), Budget("min_cos", 0.9)).text
    assert fallback_of(text) == "native"
    comment = fallback_comment(text)
    assert "self had calls the quantized kernel could not take during calibration" in prose(comment)
    assert f"3 could not be served ({reason})." in comment


@pytest.mark.parametrize("family", ["wan2.2-i2v-a14b", "wan2.1-t2v-1.3b", "flux.1-dev", "cogvideox-2b"])
def test_an_unmasked_family_keeps_fallback_error_and_its_recipe_reads_as_before(family) -> None:
    old = synthetic_sensitivity(steps=5, seed=3, family_name=family)
    new = sensitivity_from_dict(format2(family, [], steps=5, seed=3))
    for budget in (Budget("min_cos", 0.993), Budget("fp8_flop_share", 0.5)):
        text = suggest_recipe(new, budget).text
        assert fallback_of(text) == "error" and "# fallback" not in text
        # the same recipe a format-1 file gives, less the comment that its masks are unknown
        unknown = fallback_comment(suggest_recipe(old, budget).text)
        assert suggest_recipe(old, budget).text.replace(unknown + "\n", "") == text


def test_an_old_sensitivity_file_is_read_keeps_error_and_says_the_masks_are_unknown(tmp_path) -> None:
    data = json.loads(json.dumps(dict(synthetic_sensitivity(steps=4, seed=0, family_name="qwen-image").data)))
    assert data["sensitivity_format"] == 1 and "masks" not in data
    source = tmp_path / "old.json"
    source.write_text(json.dumps(data), encoding="utf-8")
    assert load_sensitivity(source).masked_kinds is None
    out = tmp_path / "recipe.yaml"
    result = runner.invoke(cli, ["suggest", str(source), "--min-cos", "0.9", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert fallback_of(text) == "error"
    assert prose(fallback_comment(text)) == (
        "fallback: error: this sensitivity file (format 1) does not record which attention kinds can carry a mask. "
        "If calls of a quantized kind carry one the kernel cannot serve exactly (not padding), the run stops with "
        "UnservableCallError: then set `fallback: native`, or re-run qcompile calibrate and suggest.")
    assert runner.invoke(cli, ["lint", "--strict", str(out)]).exit_code == 0
    # an explicit --fallback needs no guess
    result = runner.invoke(cli, ["suggest", str(source), "--min-cos", "0.9", "--fallback", "native", "-o", str(out)])
    assert result.exit_code == 0 and fallback_of(out.read_text()) == "native" and "# fallback" not in out.read_text()


def test_an_explicit_fallback_wins_and_the_comment_says_what_it_risks(tmp_path) -> None:
    source = tmp_path / "sensitivity.json"
    source.write_text(json.dumps(format2("qwen-image", ["joint"])), encoding="utf-8")
    out = tmp_path / "recipe.yaml"
    result = runner.invoke(cli, ["suggest", str(source), "--min-cos", "0.9", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert fallback_of(out.read_text()) == "native"
    assert runner.invoke(cli, ["lint", "--strict", str(out)]).exit_code == 0
    result = runner.invoke(cli, ["suggest", str(source), "--min-cos", "0.9", "--fallback", "error", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert fallback_of(text) == "error"
    assert fallback_comment(text).startswith("# fallback: error, as asked, though joint can carry an attention mask")
    assert "UnservableCallError" in fallback_comment(text)


def test_masks_that_do_not_fit_the_family_are_refused_naming_the_file(tmp_path) -> None:
    source = tmp_path / "sensitivity.json"
    data = format2("qwen-image", ["joint", "refiner"])
    source.write_text(json.dumps(data), encoding="utf-8")
    result = runner.invoke(cli, ["suggest", str(source), "--min-cos", "0.9", "-o", str(tmp_path / "r.yaml")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{source}: $.masks.masked_kinds names refiner, not a kind of the file's family (joint)" in result.output
    data = format2("hunyuanvideo1.5-t2v-480p", ["joint"])
    del data["masks"]["kinds"]["refiner"]
    with pytest.raises(SensitivityError, match=r"\$.masks.kinds has entries for joint, but the family's kinds are"):
        sensitivity_from_dict(data)
    del data["masks"]
    with pytest.raises(SensitivityError, match="'masks' is a required property"):
        sensitivity_from_dict(data)
    old = json.loads(json.dumps(dict(synthetic_sensitivity(steps=2, seed=0).data)))
    old["masks"] = {"masked_kinds": [], "kinds": {}}  # format 1 has no masks: a file that claims both is refused
    with pytest.raises(SensitivityError, match="sensitivity_v1.schema.json"):
        sensitivity_from_dict(old)


def test_the_format_1_schema_is_kept_as_committed() -> None:
    assert committed_schema("sensitivity_v1") == load_schema("sensitivity_v1")
    jsonschema.Draft202012Validator.check_schema(load_schema("sensitivity_v1"))
    assert load_schema("sensitivity")["properties"]["sensitivity_format"]["const"] == 2
    assert "masks" in load_schema("sensitivity")["required"]


# -- real calibrations on tiny pipelines ------------------------------------------------------------------------


@pytest.mark.slow
def test_calibrate_records_the_masked_kinds_and_suggest_writes_native(tmp_path) -> None:
    sensitivity, suggested = tmp_path / "sensitivity.json", tmp_path / "suggested.yaml"
    calibrate = runner.invoke(cli, ["calibrate", "--family", "hunyuanvideo1.5-t2v-480p", "--steps", "1",
                                    "--backend", "reference", "--no-progress", "-o", str(sensitivity)])
    assert calibrate.exit_code == 0, calibrate.output
    data = json.loads(sensitivity.read_text())
    jsonschema.Draft202012Validator(load_schema("sensitivity")).validate(data)
    assert data["sensitivity_format"] == 2
    assert data["masks"]["masked_kinds"] == ["joint", "refiner"]
    calls = data["masks"]["kinds"]
    # the text padding masks are served exactly: every measured call of both kinds ran packed, none was refused
    for kind in ("joint", "refiner"):
        measured = sum(c["calls"] for c in data["cells"] if c["kind"] == kind)
        assert calls[kind] == {"packed_calls": measured, "unservable_calls": 0} and measured > 0
    result = runner.invoke(cli, ["suggest", str(sensitivity), "--fp8-flop-share", "1.0", "-o", str(suggested)])
    assert result.exit_code == 0, result.output
    text = suggested.read_text()
    assert re.search(r"(?m)^attention_kinds: \[joint, refiner\]$", text)
    assert fallback_of(text) == "native"
    assert fallback_comment(text).startswith("# fallback: native: joint, refiner can carry an attention mask")
    assert compiled_fallback(text, "tiny") == "native"


@pytest.mark.slow
def test_calibrate_of_an_unmasked_model_records_no_masks(measured_sensitivity) -> None:
    # the session's tiny Wan2.2 calibration (tests/quality/conftest.py)
    assert measured_sensitivity["masks"] == {
        "masked_kinds": [],
        "kinds": {kind: {"packed_calls": 0, "unservable_calls": 0} for kind in ("cross", "self")},
    }
    text = suggest_recipe(sensitivity_from_dict(measured_sensitivity), Budget("fp8_flop_share", 0.5)).text
    assert fallback_of(text) == "error" and "# fallback" not in text


@pytest.mark.slow
def test_calibrate_counts_the_calls_the_kernel_cannot_take(monkeypatch) -> None:
    """SkyReels-V2 diffusion forcing with causal blocks of 2 frames: every self-attention call carries a block-causal
    mask, which no quantized kernel takes. Calibrate measures none of them and counts them, with the reason; the
    suggested recipe quantizes cross only, which carries no mask: `error` stays."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from runtime.models import tiny_skyreels_v2
    from runtime.quality.calibrate import CalibrateOptions, calibrate
    from runtime.quality.pipelines import FrameSettings

    pipe = tiny_skyreels_v2.build_tiny_pipeline(0, diffusion_forcing=True)
    pipe.transformer._set_ar_attention(2)  # what causal_block_size=2 sets; the pipeline reads it back
    data = calibrate(CalibrateOptions(family="skyreels-v2-df-14b-540p", steps=1, backend="reference",
                                      frames=FrameSettings(num_frames=13), progress=False), pipe=pipe)
    assert {c["kind"] for c in data["cells"]} == {"cross"}
    assert data["masks"]["masked_kinds"] == ["self"]
    self_calls = data["masks"]["kinds"]["self"]
    assert self_calls["packed_calls"] == 0 and self_calls["unservable_calls"] > 0
    assert self_calls["unservable_reason"].startswith("an attention mask that is not a padding mask")
    assert data["masks"]["kinds"]["cross"] == {"packed_calls": 0, "unservable_calls": 0}
    text = suggest_recipe(sensitivity_from_dict(data), Budget("fp8_flop_share", 1.0)).text
    assert re.search(r"(?m)^attention_kinds: \[cross\]$", text) and fallback_of(text) == "error"
    assert fallback_comment(text).startswith("# fallback: error: self can carry an attention mask in this model but")
