"""vllm-omni's own per-call quantization gate, executed from its wheel, on stubs of the objects around it.

The wheel is downloaded at test time (`pip download vllm-omni==<version> --no-deps`) into a cache folder that is
never committed (QCOMPILE_TEST_CACHE, default <repo>/.cache). From `diffusion/attention/layer.py` this takes
class Attention's `_init_kv_cache_quantization`, `_should_apply_kv_cache_quant` and `_with_kv_cache_dtype`, and
from `backends/abstract.py` the `AttentionMetadata` dataclass, and runs them unchanged. Around them: stubs shaped
like vllm-omni's forward context, platform, attention impl, Wan modules (wan2_2_transformer.py names) and Wan
pipeline (pipeline_wan2_2.py: `_dit_modules`, `self.transformer = ...`, a `diffuse` loop that records the step).
What this does not cover (the slow test does): vllm-omni's real __init__ validation, Ulysses, the real model.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from runtime.integrations.vllm_omni.vllm_omni_private import TESTED_VERSIONS

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSION = os.environ.get("QCOMPILE_VLLM_OMNI_TEST_VERSION", TESTED_VERSIONS[-1])
GATE_METHODS = ("_init_kv_cache_quantization", "_should_apply_kv_cache_quant", "_with_kv_cache_dtype")
LAYER_PY = "vllm_omni/diffusion/attention/layer.py"
ABSTRACT_PY = "vllm_omni/diffusion/attention/backends/abstract.py"
# pip's messages when the index cannot be reached at all (as opposed to a version that does not exist)
UNREACHABLE = re.compile(r"NewConnectionError|Failed to establish|Temporary failure in name resolution|"
                         r"Network is unreachable|ConnectTimeout|ProxyError|Max retries exceeded|No route to host")


class RegistryUnreachable(Exception):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("QCOMPILE_TEST_CACHE", REPO_ROOT / ".cache")) / "wheels"


def wheel_path(version: str = VERSION) -> Path:
    """The cached vllm-omni wheel, downloaded on first use. Raises RegistryUnreachable when pip cannot reach
    the index; any other pip failure (no such version...) is an error."""
    folder = cache_dir()
    found = sorted(folder.glob(f"vllm_omni-{version}-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", f"vllm-omni=={version}", "--no-deps", "--only-binary=:all:",
         "--retries", "1", "--timeout", "20", "-d", str(folder)],
        capture_output=True, text=True, timeout=600,
    )
    found = sorted(folder.glob(f"vllm_omni-{version}-*.whl"))
    if result.returncode == 0 and found:
        return found[0]
    if UNREACHABLE.search(result.stderr + result.stdout):
        raise RegistryUnreachable(f"pip could not reach the package index to download vllm-omni=={version}: "
                                  + result.stderr.strip().splitlines()[-1])
    raise RuntimeError(f"pip download vllm-omni=={version} failed:\n{result.stderr[-2000:]}")


def _class_body(source: str, class_name: str) -> ast.ClassDef:
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return node
    raise LookupError(f"class {class_name} not found")


def _exec(nodes: list[ast.stmt], namespace: dict[str, Any], filename: str) -> None:
    # postponed annotations, as in the wheel's modules: field types name classes this namespace does not have
    future = ast.parse("from __future__ import annotations").body
    code = compile(ast.Module(body=future + nodes, type_ignores=[]), filename, "exec", dont_inherit=True)
    exec(code, namespace)


class ForwardContext:
    """vllm-omni's ForwardContext, the field the gate reads (forward_context.py)."""

    def __init__(self) -> None:
        self.denoise_step_idx: int | None = None


class OmniGate:
    """The wheel's gate functions and the stub world they run in."""

    def __init__(self, wheel: Path):
        self.wheel = wheel
        self.context: ForwardContext | None = None  # None = outside a forward context
        with zipfile.ZipFile(wheel) as archive:
            layer_source = archive.read(LAYER_PY).decode()
            abstract_source = archive.read(ABSTRACT_PY).decode()
        metadata_ns: dict[str, Any] = {"dataclass": dataclasses.dataclass, "field": dataclasses.field,
                                       "torch": torch, "Any": Any}
        metadata_class = _class_body(abstract_source, "AttentionMetadata")
        _exec([metadata_class], metadata_ns, f"{wheel.name}/{ABSTRACT_PY}")
        self.AttentionMetadata = metadata_ns["AttentionMetadata"]
        attention = _class_body(layer_source, "Attention")
        methods = [n for n in attention.body if isinstance(n, ast.FunctionDef) and n.name in GATE_METHODS]
        assert sorted(m.name for m in methods) == sorted(GATE_METHODS), f"{wheel.name} lacks a gate method"
        self.namespace: dict[str, Any] = {
            "AttentionMetadata": self.AttentionMetadata,
            "replace": dataclasses.replace,
            "current_omni_platform": SimpleNamespace(device_name="npu"),
            "is_forward_context_available": lambda: self.context is not None,
            "get_forward_context": lambda: self.context,
        }
        _exec(methods, self.namespace, f"{wheel.name}/{LAYER_PY}")
        self.functions = {name: self.namespace[name] for name in GATE_METHODS}

    def step(self) -> int | None:
        """What the plugin's step source reads in vllm-omni: the forward context's denoise_step_idx."""
        return None if self.context is None else self.context.denoise_step_idx


# -- stubs shaped like vllm-omni's objects ------------------------------------------------------------------


class NpuFlashAttentionImpl:
    """The capability check vllm-omni's init asks of its impl (FlashAttentionImpl on NPU supports fp8)."""

    def supports_kv_cache_dtype(self, dtype: str, platform: str) -> bool:
        return platform == "npu" and dtype in ("fp8", "mxfp8", "mxfp4")


class FlashAttnBackend:
    @staticmethod
    def get_name() -> str:
        return "FLASH_ATTN"


def od_config(kv_cache_dtype: str | None = "fp8", skip_steps: set[int] | None = None,
              skip_layers: set[int] | None = None, ring_degree: int = 1) -> SimpleNamespace:
    """The OmniDiffusionConfig fields the gate's init reads."""
    return SimpleNamespace(
        diffusion_kv_cache_dtype=kv_cache_dtype,
        diffusion_kv_cache_skip_step_indices=skip_steps,
        diffusion_kv_cache_skip_layer_indices=skip_layers,
        parallel_config=SimpleNamespace(ring_degree=ring_degree),
    )


def make_attention_class(gate: OmniGate) -> type:
    class Attention(torch.nn.Module):
        """vllm_omni.diffusion.attention.layer.Attention: the gate methods are the wheel's, the rest a stub."""

        def __init__(self, num_heads: int, head_size: int, role: str, prefix: str, config: Any,
                     disable_kv_quant: bool = False, sink: list | None = None):
            super().__init__()
            self.role, self.prefix, self.num_heads, self.head_size = role, prefix, num_heads, head_size
            self._has_custom_attention = False
            self.attn_backend = FlashAttnBackend
            self.attention = NpuFlashAttentionImpl()
            numbers = re.findall(r"\.(\d+)\.", f".{prefix}.")  # vllm's extract_layer_index: the one int in the prefix
            self.layer_idx = int(numbers[0]) if len(numbers) == 1 else None
            self._kv_cache_dtype = None
            self._kv_cache_skip_steps = None
            self._kv_cache_skip_layers = None
            self._disable_kv_quant = disable_kv_quant
            self._init_kv_cache_quantization(config)
            self.sink = sink

        def forward(self, metadata: Any = None) -> Any:
            # layer.py _forward_impl: after the parallel strategy's pre_attention, the per-call dtype
            metadata = self._with_kv_cache_dtype(metadata)
            if self.sink is not None:
                dtype = None if metadata is None else metadata.extra.get("kv_cache_dtype")
                self.sink.append((self.prefix, gate.step(), dtype))
            return metadata

    for name, function in gate.functions.items():
        setattr(Attention, name, function)
    return Attention


class WanWorld:
    """Wan modules named as in wan2_2_transformer.py / pipeline_wan2_2.py, built from a family's sizes."""

    def __init__(self, gate: OmniGate):
        self.gate = gate
        self.Attention = make_attention_class(gate)
        self.sink: list[tuple[str, int | None, str | None]] = []
        world = self

        class WanSelfAttention(torch.nn.Module):
            def __init__(self, heads: int, head_dim: int, prefix: str, config: Any):
                super().__init__()
                self.attn = world.Attention(heads, head_dim, "self", prefix, config, sink=world.sink)

            def forward(self) -> Any:
                return self.attn(None)

        class WanCrossAttention(torch.nn.Module):
            def __init__(self, heads: int, head_dim: int, prefix: str, config: Any):
                super().__init__()
                self.attn = world.Attention(heads, head_dim, "cross", prefix, config, disable_kv_quant=True,
                                            sink=world.sink)

            def forward(self) -> Any:
                return self.attn(None)

        class WanTransformerBlock(torch.nn.Module):
            def __init__(self, heads: int, head_dim: int, prefix: str, config: Any):
                super().__init__()
                self.attn1 = WanSelfAttention(heads, head_dim, f"{prefix}.attn1", config)
                self.attn2 = WanCrossAttention(heads, head_dim, f"{prefix}.attn2", config)

            def forward(self) -> None:
                self.attn1()
                self.attn2()

        class WanTransformer3DModel(torch.nn.Module):
            def __init__(self, layers: int, heads: int, head_dim: int, config: Any):
                super().__init__()
                self.config = SimpleNamespace(num_attention_heads=heads, attention_head_dim=head_dim, num_layers=layers)
                self.blocks = torch.nn.ModuleList(
                    WanTransformerBlock(heads, head_dim, f"blocks.{i}", config) for i in range(layers))

            def forward(self) -> None:
                for block in self.blocks:
                    block()

        class Wan22Pipeline(torch.nn.Module):
            _dit_modules = ["transformer", "transformer_2"]

            def __init__(self, components: list[tuple[str, int, int, int]], config: Any, schedule: list[str]):
                super().__init__()
                self.schedule = schedule
                self.transformer = None
                self.transformer_2 = None
                for name, layers, heads, head_dim in components:
                    setattr(self, name, WanTransformer3DModel(layers, heads, head_dim, config))

            def forward(self, batch: Any) -> list[str]:
                # diffuse(): record_denoise_step(step_idx, t), pick the expert, run it (CFG: twice)
                steps = batch.sampling_params_list[0].num_inference_steps or 40
                world.gate.context = ForwardContext()
                try:
                    for step in range(steps):
                        world.gate.context.denoise_step_idx = step
                        getattr(self, self.schedule[min(step, len(self.schedule) - 1)])()
                    if getattr(batch, "extra_block_call_without_step", False):
                        world.gate.context.denoise_step_idx = None  # a call in a context whose step nobody recorded
                        self.transformer.blocks[0]()
                finally:
                    world.gate.context = None
                return ["video"]

        self.Wan22Pipeline = Wan22Pipeline
        self.WanTransformer3DModel = WanTransformer3DModel

    def pipeline(self, family: Any, config: Any, schedule: list[str], components: list[str] | None = None) -> Any:
        chosen = [c for c in family.components if components is None or c.name in components]
        return self.Wan22Pipeline([(c.name, c.block_lists[0].length, c.num_heads, c.head_dim) for c in chosen], config, schedule)


def request_batch(steps: int | None, *, warmup: bool = False, request_id: str = "req-1") -> Any:
    """DiffusionRequestBatch as the Wan pipeline reads it (worker/request_batch.py)."""
    params = SimpleNamespace(num_inference_steps=steps)
    return SimpleNamespace(sampling_params_list=[params], request_id="dummy_req_id" if warmup else request_id,
                           is_dummy_run=lambda: warmup)
