"""The plugin inside vllm-omni's real attention layer on CPU: one rank, then two Ulysses ranks (gloo).

Opt-in (marker vllm_omni_stack) and skipped unless vllm and vllm-omni are importable. Install the stack with
`pip install --no-deps -r tests/integrations/vllm_omni_stack.txt` into an environment that already has this
project's torch (2.13.0+cpu) and diffusers; resolving vllm's dependencies instead pulls a CUDA torch.
vllm-omni finds the plugin by its entry point: the test writes a dist-info declaring the same entry point as
pyproject.toml, so no install of qcompile is needed. See vllm_omni_cpu.py for the stand-ins (a CPU platform,
a recording SDPA impl, and for the NPU check a platform switched to NPU after import and a `mindiesd` stand-in).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qcompiler.families import get_family
from qcompiler.plan.format import write_plan
from qcompiler.targets.vllm_omni import NotExpressibleError, export_vllm_omni
from tests.export.conftest import build_plan

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.vllm_omni_stack,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None or importlib.util.find_spec("vllm_omni") is None,
                       reason="vllm and vllm-omni are not installed (pip install --no-deps -r "
                              "tests/integrations/vllm_omni_stack.txt)"),
]
STEPS = 4


def entry_point_dist_info(site: Path) -> None:
    """A dist-info carrying pyproject.toml's vllm_omni.general_plugins entry point (read from it)."""
    import tomllib  # Python 3.11+, as vllm 0.30 needs

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    group = project["entry-points"]["vllm_omni.general_plugins"]
    info = site / f"qcompile-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: qcompile\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text(
        "[vllm_omni.general_plugins]\n" + "".join(f"{k} = {v}\n" for k, v in group.items()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world: int, ulysses: int, tmp_path: Path, env: dict[str, str], model: str = "layers") -> list[dict]:
    env = {**env, "PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    outs = [tmp_path / f"{model}-w{world}-rank{r}.json" for r in range(world)]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.integrations.vllm_omni_cpu", str(r), str(world),
                               str(ulysses), str(outs[r]), model], cwd=REPO_ROOT, env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-6000:]
    return [json.loads(o.read_text()) for o in outs]


@pytest.fixture(scope="module")
def plan():
    family = get_family("wan2.2-t2v-a14b", "tiny")
    rng = random.Random(15)
    tables = {(c.name, kind): ["".join(rng.choice("01") for _ in range(family.num_layers(c.name, kind))) for _ in range(STEPS)]
              for c in family.components for kind in family.kinds}
    built = build_plan(tables, ["transformer", "transformer", "transformer_2", "transformer_2"],
                       family="wan2.2-t2v-a14b", variant="tiny")
    with pytest.raises(NotExpressibleError):
        export_vllm_omni(built)
    return built


@pytest.fixture
def stack_env(plan, tmp_path: Path) -> dict[str, str]:
    write_plan(plan, tmp_path / "plan.json")
    entry_point_dist_info(tmp_path / "site")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(tmp_path / "site")]),
            "QCOMPILE_VLLM_OMNI_PLAN": str(tmp_path / "plan.json"),
            "QCOMPILE_VLLM_OMNI_REPORT_DIR": str(tmp_path / "executed")}


def planned_dtypes(plan) -> dict[tuple[int, str], str]:
    want = {}
    for step, component in enumerate(plan.expert_schedule):
        for kind, attn in (("self", "attn1"), ("cross", "attn2")):
            for layer, fp8 in enumerate(plan.table(component, kind)[step]):
                want[(step, f"blocks.{layer}.{attn}")] = "fp8" if fp8 else "float"
    return want


def assert_followed(plan, rank_result: dict) -> None:
    want = planned_dtypes(plan)
    got = {(step, prefix): dtype for step, prefix, dtype in rank_result["calls"]}
    assert len(rank_result["calls"]) == len(want) and got == want
    assert rank_result["matches_plan"]
    assert rank_result["tagged"] == {"transformer": 80, "transformer_2": 80}


def test_real_wan_transformer_follows_the_plan(plan, stack_env, tmp_path: Path):
    (result,) = run_ranks(1, 1, tmp_path, stack_env, model="wan")
    assert_followed(plan, result)
    assert all(value == value for value in result["outputs"]["latents"])  # the real model ran to the end, no NaN


def test_real_attention_layer_follows_the_plan_on_one_and_two_ulysses_ranks(plan, stack_env, tmp_path: Path):
    single = run_ranks(1, 1, tmp_path, stack_env)
    pair = run_ranks(2, 2, tmp_path, stack_env)
    for rank_result in single + pair:
        assert_followed(plan, rank_result)
    assert "UlyssesParallelAttention" in pair[0]["strategies"] and "UlyssesParallelAttention" not in single[0]["strategies"]
    for key, full in single[0]["outputs"].items():
        shards = [torch.tensor(r["outputs"][key]).reshape(1, -1, 2, 64) for r in pair]
        torch.testing.assert_close(torch.cat(shards, dim=1).flatten(), torch.tensor(full), rtol=1e-5, atol=1e-5)
    for rank in (0, 1):
        assert json.loads((tmp_path / "executed" / f"rank{rank}.json").read_text())["matches_plan"]


def test_vllm_omni_npu_path_calls_quant_attention_exactly_on_fp8_cells(plan, stack_env, tmp_path: Path):
    """vllm-omni's own FlashAttentionImpl.forward_npu, on a stand-in NPU: its call contract, not the kernel."""
    (result,) = run_ranks(1, 1, tmp_path, stack_env, model="npu")
    want = []  # (step, kind, entry) in call order: per step, per layer, self then cross
    for step, component in enumerate(plan.expert_schedule):
        for layer in range(plan.family.num_layers(plan.component_names[0], "self")):
            for kind in ("self", "cross"):
                fp8 = plan.table(component, kind)[step][layer]
                want.append((step, kind, "quant_attention" if fp8 else "attention_forward"))
    assert [(c["step"], c["entry"]) for c in result["npu_calls"]] == [(step, entry) for step, _, entry in want]
    assert ("cross", "quant_attention") in {(kind, entry) for _, kind, entry in want}  # FP8 cross-attention too
    quantized = [c for c in result["npu_calls"] if c["entry"] == "quant_attention"]
    assert all(c["precision"] == "fp8" and c["layout"] == "BSND" and c["q_rot"] == [64, 64]
               and c["rot_orthogonal"] and c["same_rot"] for c in quantized)
