"""Every kind of bad recipe input gives one located, explained diagnostic, never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from qcompiler.cli.main import cli
from qcompiler.compile.compiler import compile_path, compile_source
from tests.conftest import VALID_RECIPE


def only_error(result):
    assert result.plan is None
    assert result.errors, result.diagnostics
    return result.errors[0]


def replace_line(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "code", "line", "column", "fragment"),
    [
        ('    steps: "0, last 1"', "    steps: 10:20", "QC101", 14, 12, "base-60 number 620"),
        ("  hadamard_rotation: true", "  hadamard_rotation: yes", "QC102", 6, 22, "boolean true"),
        ("  hadamard_rotation: true", "  hadamard_rotation: off", "QC102", 6, 22, "boolean false"),
        ("  rotation_seed: 425500", "  rotation_seed: 0x10", "QC103", 7, 18, "another base"),
        ("  rotation_seed: 425500", "  rotation_seed: 010", "QC103", 7, 18, "another base"),
        ("  rotation_seed: 425500", "  rotation_seed: 1_000", "QC103", 7, 18, "separators"),
        ("  rotation_seed: 425500", "  rotation_seed: " + "9" * 40, "QC104", 7, 18, "too large"),
        ("  rotation_seed: 425500", "  rotation_seed: 99999999999", "QC114", 7, 18, "out of range"),
        ("fallback: error", "on: error", "QC102", 8, 1, "boolean"),
        ("family: wan2.2-i2v-a14b", "family: wan2.2-i2v-a41b", "QC120", 2, 9, "Did you mean 'wan2.2-i2v-a14b'"),
        ("default: fp8", "defualt: fp8", "QC110", 11, 1, "unknown key `defualt`"),
        ("fallback: error", "fallback: eror", "QC112", 8, 11, "valid: error, native"),
        ("num_inference_steps: 4", 'num_inference_steps: "4"', "QC111", 3, 22, "must be an integer"),
        ("num_inference_steps: 4", "num_inference_steps: 100000", "QC114", 3, 22, "out of range"),
        # kinds are open names the family declares: an unknown one is QC121, checked against the family
        ("attention_kinds: [self]", "attention_kinds: [slef]", "QC121", 9, 19, "did you mean `self`"),
        ("components: [transformer, transformer_2]", "components: [transformer, transformer_3]", "QC121", 10, 27, "no component `transformer_3`"),
    ],
)
def test_each_bad_value_is_located_and_explained(old, new, code, line, column, fragment):
    error = only_error(compile_source(replace_line(VALID_RECIPE, old, new), name="r.yaml"))
    assert (error.code, error.line, error.column) == (code, line, column), error
    assert fragment in error.message + " " + error.hint


def test_unknown_key_gets_did_you_mean():
    error = only_error(compile_source(replace_line(VALID_RECIPE, "default: fp8", "defualt: fp8"), name="r.yaml"))
    assert error.hint == "did you mean `default`?"


def test_duplicate_key_names_both_lines():
    error = only_error(compile_source(VALID_RECIPE + "fallback: native\n", name="r.yaml"))
    assert error.code == "QC006" and error.line == 19 and "first written on line 8" in error.message


def test_alias_bomb_is_refused_before_expansion():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(12)
    )
    error = only_error(compile_source(bomb, name="bomb.yaml"))
    assert error.code == "QC007" and (error.line, error.column) == (1, 4)


def test_explicit_tags_are_refused():
    error = only_error(compile_source("version: !!python/object:os.system 1\n", name="t.yaml"))
    assert error.code == "QC008"


def test_tab_indentation_points_at_the_tab():
    text = VALID_RECIPE.replace("  rotation_seed: 425500", "\trotation_seed: 425500")
    error = only_error(compile_source(text, name="r.yaml"))
    assert (error.code, error.line, error.column) == ("QC005", 7, 1)


def test_bom_is_refused(write_recipe):
    error = only_error(compile_path(write_recipe(b"\xef\xbb\xbf" + VALID_RECIPE.encode())))
    assert error.code == "QC003" and "byte-order mark" in error.message


def test_non_utf8_byte_is_located(write_recipe):
    raw = VALID_RECIPE.encode().replace(b"wan2.2-i2v-a14b", b"wan2.2-i2v-\xff14b")
    error = only_error(compile_path(write_recipe(raw)))
    assert (error.code, error.line, error.column) == ("QC002", 2, 20) and "0xff" in error.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(text):
    assert only_error(compile_source(text, name="e.yaml")).code == "QC004"


def test_top_level_list():
    error = only_error(compile_source("- version: 1\n- family: x\n", name="l.yaml"))
    assert error.code == "QC010" and "found a list" in error.message


def test_two_documents():
    assert only_error(compile_source(VALID_RECIPE + "---\nversion: 1\n", name="d.yaml")).code == "QC005"


def test_yaml_syntax_error_is_located():
    error = only_error(compile_source("version: 1\nfamily: [unclosed\n", name="s.yaml"))
    assert error.code == "QC005" and error.line >= 2


def test_missing_path_and_directory(tmp_path):
    assert only_error(compile_path(tmp_path / "absent.yaml")).code == "QC001"
    error = only_error(compile_path(tmp_path))
    assert error.code == "QC001" and "directory" in error.message


def test_missing_required_key_says_what_it_is():
    text = replace_line(VALID_RECIPE, "fallback: error\n", "")
    error = only_error(compile_source(text, name="r.yaml"))
    assert error.code == "QC113" and "`fallback`" in error.message and "refuses" in error.hint


@pytest.mark.parametrize(
    ("selector", "code", "fragment"),
    [
        ('"5-2"', "QC132", 'write it as "2-5"'),
        ('"0-2, 45"', "QC131", "the model has 40 layers (valid: 0-39)"),
        ("[0, 40]", "QC131", "valid: 0-39"),
        ('"first 41"', "QC131", "the model has 40"),
        ('"-1"', "QC130", "negative"),
        ('"1,,2"', "QC130", "empty item"),
        ("[]", "QC133", "selects nothing"),
        ("3", "QC134", 'write "3" (quoted) or [3]'),
        ('"first 10%"', "QC130", "percentages select steps only"),
        ('"layer 3"', "QC130", "cannot read"),
    ],
)
def test_bad_layer_selectors(selector, code, fragment):
    text = replace_line(VALID_RECIPE, '    layers: "0"', f"    layers: {selector}")
    error = only_error(compile_source(text, name="r.yaml"))
    assert error.code == code and error.line == 17, error
    assert fragment in error.message + " " + error.hint
    assert "first-block" in error.message


def test_selector_error_column_points_inside_the_string():
    text = replace_line(VALID_RECIPE, '    layers: "0"', '    layers: "0-2, 45"')
    error = only_error(compile_source(text, name="r.yaml"))
    # `    layers: "` is 13 characters, "0-2, " 5 more: the 45 starts at column 19.
    assert error.column == 19


def test_step_index_past_the_step_count():
    text = replace_line(VALID_RECIPE, '    steps: "0, last 1"', '    steps: "4"')
    error = only_error(compile_source(text, name="r.yaml"))
    assert error.code == "QC131" and "the model has 4 steps (valid: 0-3)" in error.message


def test_rule_outside_the_scope_is_an_error():
    text = replace_line(VALID_RECIPE, '    layers: "0"', '    layers: "0"\n    attention_kinds: [cross]')
    error = only_error(compile_source(text, name="r.yaml"))
    assert error.code == "QC121" and "not in the recipe's `attention_kinds`" in error.message


def test_duplicate_rule_names():
    text = replace_line(VALID_RECIPE, "name: first-block", "name: edge-steps")
    assert only_error(compile_source(text, name="r.yaml")).code == "QC140"


@pytest.mark.parametrize(
    "content",
    [b"", b"\xef\xbb\xbfversion: 1\n", b"\xfe\xff", b"- 1\n", b"a: &x 1\nb: *x\n", b"version: 1\n\tfamily: x\n",
     b"[", b"{", b"version: 10:20\n", b": :\n", b"version: 1\nfamily: wan2.2-i2v-a14b\n"],
)
def test_cli_never_shows_a_traceback(write_recipe, content):
    path = write_recipe(content)
    for args in (["lint", str(path)], [str(path), "-o", str(path.with_suffix(".json"))]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
        assert "error[QC" in result.output
        assert not path.with_suffix(".json").exists()
