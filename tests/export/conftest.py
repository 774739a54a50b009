"""Fixtures for the vllm-omni export and pipeline-patch tests.

`build_plan` builds real, hash-verified plans straight from tables (the plan format is the contract), so
hypothesis can generate any table. The independent decoder of vllm-omni settings is in vllm_decoder.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from qcompiler.families import get_family
from qcompiler.plan.format import PLAN_FORMAT, Plan, content_sha256, load_plan

FAMILY = "wan2.2-i2v-a14b"
RECIPE = """\
version: 1
family: wan2.2-i2v-a14b
num_inference_steps: 4
dtype: fp8_e4m3_per_block
numerics: {hadamard_rotation: true, rotation_seed: 425500}
fallback: error
attention_kinds: [self]
components: [transformer, transformer_2]
default: fp8
rules:
  - name: edge-steps
    steps: "0, last 1"
    layers: "0-2"
    precision: native
"""


def build_plan(
    tables: Mapping[tuple[str, str], list[str]],
    schedule: list[str],
    *,
    family: str = FAMILY,
    variant: str | None = None,
    numerics: Mapping[str, object] | None = None,
    fallback: str = "native",
) -> Plan:
    """A plan whose (component, kind) tables are `tables` (missing ones all native), verified by load_plan."""
    fam = get_family(family, variant)
    steps = len(schedule)
    data = {
        "plan_format": PLAN_FORMAT,
        "compiler": {"name": "qcompile", "version": "test"},
        "family": fam.structure(),
        "num_inference_steps": steps,
        "dtype": "fp8_e4m3_per_block",
        "numerics": {
            "hadamard_rotation": True,
            "rotation_seed": 425500,
            "query_block_tokens": 128,
            "kv_block_tokens": 256,
            "k_mean_subtraction": False,
            **(numerics or {}),
        },
        "fallback": fallback,
        "expert_schedule": list(schedule),
        "tables": {
            c.name: {kind: list(tables.get((c.name, kind), ["0" * fam.num_layers(c.name, kind)] * steps)) for kind in fam.kinds}
            for c in fam.components
        },
        "rules": [],
        "recipe": {"name": "generated-by-test", "sha256": "0" * 64, "default": "native"},
    }
    data["content_sha256"] = content_sha256(data)
    return load_plan(data)


@pytest.fixture(scope="session")
def make_plan() -> Callable[..., Plan]:
    return build_plan


# -- saved tiny pipelines ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def saved_tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny Wan2.2 I2V pipeline saved with save_pretrained, once per session. Do not modify: copy it."""
    tiny = pytest.importorskip("runtime.tiny")
    folder = tmp_path_factory.mktemp("tiny-pipeline") / "pipe"
    tiny.save_tiny_pipeline(tiny.build_tiny_pipeline(FAMILY), folder)
    return folder


@pytest.fixture
def pipeline_dir(saved_tiny_pipeline: Path, tmp_path: Path) -> Path:
    """A private copy of the saved tiny pipeline (weights included) for one test to patch."""
    return Path(shutil.copytree(saved_tiny_pipeline, tmp_path / "pipe"))


@pytest.fixture
def config_only_pipeline_dir(saved_tiny_pipeline: Path, tmp_path: Path) -> Path:
    """The saved tiny pipeline's JSON files only: patching reads and writes nothing else, and this is fast."""
    return Path(
        shutil.copytree(
            saved_tiny_pipeline, tmp_path / "pipe", ignore=shutil.ignore_patterns("*.safetensors", "*.bin")
        )
    )


@pytest.fixture(scope="session")
def tiny_plan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The edge-steps recipe compiled for the tiny variant (the model the saved pipeline is)."""
    from qcompiler import compile_recipe_text
    from qcompiler.plan.format import write_plan

    path = tmp_path_factory.mktemp("plans") / "tiny-plan.json"
    write_plan(compile_recipe_text(RECIPE, name="edge.yaml", variant="tiny"), path)
    return path
