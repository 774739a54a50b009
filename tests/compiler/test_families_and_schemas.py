"""Families are data; schemas are complete; the compiler never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest

import qcompiler
from qcompiler.errors import FamilyError
from qcompiler.families import BUILTIN_FAMILY_DIR, FAMILY_PATH_ENV, get_family, list_families
from qcompiler.schemas import load_schema
from tests.conftest import VALID_RECIPE


def test_builtin_families_match_the_reference_sizes():
    sizes = {f.name: [(c.name, *(f"{b.name}:{b.length}" for b in c.block_lists), c.num_heads, c.head_dim)
                      for c in f.components]
             for f in list_families()}
    assert sizes["wan2.2-i2v-a14b"] == [("transformer", "blocks:40", 40, 128), ("transformer_2", "blocks:40", 40, 128)]
    assert sizes["wan2.2-ti2v-5b"] == [("transformer", "blocks:30", 24, 128)]
    assert sizes["wan2.1-t2v-1.3b"] == [("transformer", "blocks:30", 12, 128)]
    assert get_family("wan2.2-t2v-a14b").boundary_ratio == 0.875
    # diffusers 0.42.1 class defaults (CogVideoX-5B: its released config), docs/families.md
    assert sizes["flux.1-dev"] == sizes["flux.1-schnell"] == [
        ("transformer", "transformer_blocks:19", "single_transformer_blocks:38", 24, 128)]
    assert sizes["hunyuanvideo1.5-t2v-480p"] == [
        ("transformer", "transformer_blocks:54", "refiner_blocks:2", 16, 128)]
    assert sizes["ltx-video"] == [("transformer", "transformer_blocks:28", 32, 64)]
    assert sizes["cogvideox-2b"] == [("transformer", "transformer_blocks:30", 30, 64)]
    assert sizes["cogvideox-5b"] == [("transformer", "transformer_blocks:42", 48, 64)]
    assert sizes["qwen-image"] == [("transformer", "transformer_blocks:60", 24, 128)]


def test_a_new_family_needs_only_a_data_file(tmp_path, monkeypatch):
    data = json.loads((BUILTIN_FAMILY_DIR / "wan21_t2v_13b.json").read_text())
    data.update(name="my-wan-variant", description="a family added as data")
    data["components"][0]["block_lists"][0]["length"] = 12
    (tmp_path / "mine.json").write_text(json.dumps(data))
    monkeypatch.setenv(FAMILY_PATH_ENV, str(tmp_path))
    text = VALID_RECIPE.replace("wan2.2-i2v-a14b", "my-wan-variant").replace("components: [transformer, transformer_2]\n", "")
    plan = qcompiler.compile_recipe_text(text)
    assert plan.family_name == "my-wan-variant" and len(plan.table("transformer", "self")[0]) == 12


def test_malformed_family_file_is_reported_when_used(tmp_path, monkeypatch):
    (tmp_path / "broken.json").write_text(json.dumps({"name": "broken"}))
    (tmp_path / "notjson.json").write_text("{")
    monkeypatch.setenv(FAMILY_PATH_ENV, str(tmp_path))
    with pytest.raises(FamilyError, match=r"broken.json: \$: 'description' is a required property"):
        get_family("broken")
    with pytest.raises(FamilyError, match="notjson.json:1:2: not valid JSON"):
        list_families()
    with pytest.raises(FamilyError, match="unreadable family files: .*notjson.json"):
        get_family("nope")
    assert get_family("wan2.2-i2v-a14b").name == "wan2.2-i2v-a14b"  # other families still work


def test_unknown_variant():
    with pytest.raises(FamilyError, match="no variant 'huge'"):
        get_family("wan2.2-i2v-a14b", "huge")


def _walk(schema, path=""):
    if isinstance(schema, dict):
        if "type" in schema or "enum" in schema or "const" in schema or "$ref" in schema or "oneOf" in schema:
            yield path, schema
        for key, value in schema.items():
            if key in ("properties", "$defs"):
                for name, sub in value.items():
                    yield from _walk(sub, f"{path}/{name}")
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                yield from _walk(value, f"{path}/{key}")


def test_recipe_schema_is_closed_and_documented():
    schema = load_schema("recipe")
    jsonschema.Draft202012Validator.check_schema(schema)
    for path, sub in _walk(schema):
        assert "description" in sub or "$ref" in sub, f"{path} has no description"
        if sub.get("type") == "object":
            assert sub.get("additionalProperties") is False, f"{path} is not closed"


@pytest.mark.parametrize("name", ["plan", "plan_v1", "family", "family_v1", "sensitivity", "report"])
def test_other_schemas_are_valid(name):
    jsonschema.Draft202012Validator.check_schema(load_schema(name))


def test_shipped_recipes_name_their_schema(repo_root):
    for recipe in sorted((repo_root / "recipes").glob("*.yaml")):
        assert recipe.read_text().splitlines()[0] == "# yaml-language-server: $schema=../schemas/recipe.schema.json"


def test_importing_every_qcompiler_module_never_imports_torch():
    code = (
        "import sys, importlib, pkgutil, qcompiler\n"
        "for m in pkgutil.walk_packages(qcompiler.__path__, 'qcompiler.'):\n"
        "    importlib.import_module(m.name)\n"
        "import qcompiler.cli.main\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers', 'runtime'))\n"
        "print(bad)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
