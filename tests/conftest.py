"""Shared test fixtures: paths into the repository and a valid recipe to mutate."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


def _select_triton_interpreter_without_cuda() -> None:
    """Without CUDA, run Triton kernels in Triton's CPU interpreter (the fp8-triton tests do).

    Triton fixes interpreted-or-compiled for its own library functions when it is first imported, and diffusers
    imports triton on its own: so this must happen here, before any test module imports diffusers.
    """
    if importlib.util.find_spec("triton") is None:
        return  # no triton: nothing to select (torch, if any, is then not imported here either)
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_select_triton_interpreter_without_cuda()

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO_ROOT / "recipes"

VALID_RECIPE = """\
version: 1
family: wan2.2-i2v-a14b
num_inference_steps: 4
dtype: fp8_e4m3_per_block
numerics:
  hadamard_rotation: true
  rotation_seed: 425500
fallback: error
attention_kinds: [self]
components: [transformer, transformer_2]
default: fp8
rules:
  - name: edge-steps
    steps: "0, last 1"
    precision: native
  - name: first-block
    layers: "0"
    precision: native
"""


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def valid_recipe_text() -> str:
    return VALID_RECIPE


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write recipe text (or bytes) to a file in tmp_path and return its path."""

    def write(content: str | bytes, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return write
