"""Run vllm-omni's real attention layer on CPU with the plugin, on one rank or several Ulysses ranks (gloo).

Run as `python -m tests.integrations.vllm_omni_cpu RANK WORLD ULYSSES OUT_JSON MODEL` with
QCOMPILE_VLLM_OMNI_PLAN set; used by test_vllm_omni_stack.py. MODEL is `layers` (vllm-omni's real Attention in a
tree named like the Wan model, fed Q/K/V directly: the Ulysses check) or `wan` (vllm-omni's real
WanTransformer3DModel, random weights, one rank: tagging and the gate on the real model tree) or `npu`
(the `layers` tree with the platform switched to a stand-in NPU after import, so vllm-omni's own
FlashAttentionImpl.forward_npu runs; `mindiesd` is a stand-in that records each call's contract: which entry
point, precision, layout, rotation. It computes plain SDPA and says nothing about the NPU kernels). Needs vllm and vllm-omni installed (vllm_omni_stack.txt, --no-deps).

vllm-omni has no CPU platform, so two test-only stand-ins make its code runnable here, and nothing else:
- a platform (`CpuTestPlatform`: device "cpu", gloo, one device), installed before vllm-omni resolves one;
- an attention impl (`RecordingSDPAImpl`): vllm-omni's own SDPAImpl, declared to accept kv_cache_dtype "fp8" on
  "cpu" (so vllm-omni's init validation passes), recording the kv_cache_dtype each call receives. It computes
  plain SDPA whatever the dtype: there is no FP8 kernel on CPU, so the outputs check Ulysses, not FP8 numerics.
Everything between them is vllm-omni's: Attention.__init__ (backend selection, kv-cache validation, the parallel
strategy), Ulysses' all-to-all, `_with_kv_cache_dtype`, the forward context and its step.
"""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace
from typing import Any

import torch

BATCH, SEQ, TEXT = 1, 8, 4  # tokens per request; SEQ divisible by the Ulysses degree
CALLS: list[tuple[int | None, str, str | None]] = []  # (step, prefix, kv_cache_dtype) per attention call


def install_cpu_platform() -> None:
    import vllm_omni.platforms as platforms
    from vllm_omni.platforms.interface import UnspecifiedOmniPlatform

    class CpuTestPlatform(UnspecifiedOmniPlatform):
        device_name = "cpu"
        dist_backend = "gloo"

        @classmethod
        def get_diffusion_attn_backend_cls(cls, selected_backend: Any, head_size: int,
                                           allow_trtllm_default: bool = False) -> str:
            return f"{__name__}.RecordingSDPABackend"

        @classmethod
        def get_device_count(cls) -> int:
            return 1

        @classmethod
        def set_device(cls, device: Any) -> None:
            return None

    platforms._current_omni_platform = CpuTestPlatform()  # resolved lazily; set before layer.py imports it


NPU_CALLS: list[dict[str, Any]] = []  # what vllm-omni's NPU path passed to the mindiesd stand-in


def install_npu_stand_ins() -> None:
    """Switch the platform object vllm-omni already imported to report an NPU, and provide `mindiesd`."""
    import types

    import vllm_omni.platforms as platforms
    from vllm_omni.diffusion.forward_context import get_forward_context

    base = type(platforms._current_omni_platform)

    class StandInNpuPlatform(base):  # swapped after import: an NPU platform at import pulls vllm_ascend
        device_name = "npu"

        def is_npu(self) -> bool:
            return True

        @classmethod
        def get_diffusion_attn_backend_cls(cls, selected_backend: Any, head_size: int,
                                           allow_trtllm_default: bool = False) -> str:
            return "vllm_omni.diffusion.attention.backends.flash_attn.FlashAttentionBackend"

    platforms._current_omni_platform.__class__ = StandInNpuPlatform

    def sdpa_bsnd(query, key, value, scale):
        out = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (query, key, value)),
                                                               scale=scale)
        return out.transpose(1, 2)

    def quant_attention(query, key, value, *, precision, layout, scale, q_rot=None, k_rot=None):
        NPU_CALLS.append({"step": get_forward_context().denoise_step_idx, "entry": "quant_attention",
                          "precision": precision, "layout": layout,
                          "q_rot": None if q_rot is None else list(q_rot.shape),
                          "rot_orthogonal": q_rot is not None and bool(torch.allclose(
                              q_rot.float() @ q_rot.float().T, torch.eye(q_rot.shape[0]), atol=1e-5)),
                          "same_rot": q_rot is k_rot})
        return sdpa_bsnd(query, key, value, scale)

    def attention_forward(query, key, value, *args, **kwargs):
        NPU_CALLS.append({"step": get_forward_context().denoise_step_idx, "entry": "attention_forward"})
        return sdpa_bsnd(query, key, value, kwargs.get("scale"))

    stand_in = types.ModuleType("mindiesd")
    stand_in.quant_attention, stand_in.attention_forward = quant_attention, attention_forward
    sys.modules["mindiesd"] = stand_in


def _backend_classes() -> tuple[type, type]:
    from vllm_omni.diffusion.attention.backends.sdpa import SDPABackend, SDPAImpl

    class RecordingSDPAImpl(SDPAImpl):
        _supported_kv_cache_dtypes = {"cpu": {"fp8"}}

        def __init__(self, *args: Any, prefix: str = "", **kwargs: Any):
            super().__init__(*args, prefix=prefix, **kwargs)
            self.prefix = prefix

        def forward(self, query, key, value, attn_metadata=None):
            from vllm_omni.diffusion.forward_context import get_forward_context

            dtype = None if attn_metadata is None else attn_metadata.extra.get("kv_cache_dtype")
            CALLS.append((get_forward_context().denoise_step_idx, self.prefix, dtype))
            return self._forward_impl(query, key, value, attn_metadata)

    class RecordingSDPABackend(SDPABackend):
        @staticmethod
        def get_name() -> str:
            return "TORCH_SDPA"

        @staticmethod
        def get_impl_cls() -> type:
            return RecordingSDPAImpl

    return RecordingSDPABackend, RecordingSDPAImpl


def __getattr__(name: str) -> Any:  # the backend is resolved by qualified name after vllm-omni is importable
    if name in ("RecordingSDPABackend", "RecordingSDPAImpl"):
        backend, impl = _backend_classes()
        globals().update(RecordingSDPABackend=backend, RecordingSDPAImpl=impl)
        return globals()[name]
    raise AttributeError(name)


def build_world(plan: Any, od_config: Any) -> Any:
    """A module tree named as vllm-omni's Wan model (blocks.N.attn1.attn / attn2.attn), its Attention real."""
    from vllm_omni.diffusion.attention.layer import Attention

    class SelfAttention(torch.nn.Module):
        def __init__(self, heads: int, head_dim: int, prefix: str):
            super().__init__()
            self.attn = Attention(num_heads=heads, head_size=head_dim, num_kv_heads=heads,
                                  softmax_scale=head_dim ** -0.5, causal=False, role="self", qkv_layout="BSND",
                                  prefix=prefix)

    class CrossAttention(torch.nn.Module):
        def __init__(self, heads: int, head_dim: int, prefix: str):
            super().__init__()
            self.attn = Attention(num_heads=heads, head_size=head_dim, num_kv_heads=heads,
                                  softmax_scale=head_dim ** -0.5, causal=False, role="cross", qkv_layout="BSND",
                                  prefix=prefix, skip_sequence_parallel=True, disable_kv_quant=True)

    class Block(torch.nn.Module):
        def __init__(self, heads: int, head_dim: int, prefix: str):
            super().__init__()
            self.attn1 = SelfAttention(heads, head_dim, f"{prefix}.attn1")
            self.attn2 = CrossAttention(heads, head_dim, f"{prefix}.attn2")

    class Transformer(torch.nn.Module):
        def __init__(self, layers: int, heads: int, head_dim: int):
            super().__init__()
            self.config = type("Config", (), {"num_attention_heads": heads, "attention_head_dim": head_dim})()
            self.blocks = torch.nn.ModuleList(Block(heads, head_dim, f"blocks.{i}") for i in range(layers))

    class Wan22Pipeline(torch.nn.Module):
        _dit_modules = ["transformer", "transformer_2"]

        def __init__(self) -> None:
            super().__init__()
            for c in plan.family.components:
                setattr(self, c.name, Transformer(c.block_lists[0].length, c.num_heads, c.head_dim))

        def forward(self, batch: Any) -> dict[str, list[list[float]]]:
            from vllm_omni.diffusion.forward_context import set_forward_context_denoise_step_idx

            outputs = {}
            for step in range(batch.sampling_params_list[0].num_inference_steps):
                set_forward_context_denoise_step_idx(step)  # what Wan's record_denoise_step does
                model = getattr(self, plan.expert_schedule[step])
                for layer, block in enumerate(model.blocks):
                    q, k, v, text = inputs(step, layer, model.config)
                    outputs[f"{step}.{layer}.self"] = block.attn1.attn(q, k, v).flatten().tolist()
                    outputs[f"{step}.{layer}.cross"] = block.attn2.attn(q, text, text).flatten().tolist()
            return outputs

    return Wan22Pipeline


def import_wan_transformer() -> type:
    """vllm-omni's WanTransformer3DModel, without running wan2_2/__init__ (it imports the video pipelines, which
    need av and torchvision builds this test does not install)."""
    import importlib
    import types

    import vllm_omni.diffusion.models as models

    package = types.ModuleType("vllm_omni.diffusion.models.wan2_2")
    package.__path__ = [os.path.join(models.__path__[0], "wan2_2")]
    sys.modules.setdefault(package.__name__, package)
    return importlib.import_module("vllm_omni.diffusion.models.wan2_2.wan2_2_transformer").WanTransformer3DModel


def build_wan_world(plan: Any) -> Any:
    """A pipeline holding vllm-omni's real Wan experts, assigned as Wan22Pipeline assigns them."""
    wan = import_wan_transformer()

    class Wan22Pipeline(torch.nn.Module):
        _dit_modules = ["transformer", "transformer_2"]

        def __init__(self) -> None:
            super().__init__()
            for c in plan.family.components:
                model = wan(num_layers=c.block_lists[0].length, num_attention_heads=c.num_heads,
                            attention_head_dim=c.head_dim, text_dim=32, ffn_dim=64, freq_dim=32, in_channels=4,
                            out_channels=4)
                for parameter in model.parameters():  # vllm-omni allocates with torch.empty until load_weights
                    torch.nn.init.normal_(parameter, std=0.02)
                setattr(self, c.name, model)

        def forward(self, batch: Any) -> dict[str, list[float]]:
            from vllm_omni.diffusion.forward_context import set_forward_context_denoise_step_idx

            g = torch.Generator().manual_seed(0)
            latents, text = torch.randn((1, 4, 2, 4, 4), generator=g), torch.randn((1, 6, 32), generator=g)
            for step in range(batch.sampling_params_list[0].num_inference_steps):
                set_forward_context_denoise_step_idx(step)
                model = getattr(self, plan.expert_schedule[step])
                latents = model(hidden_states=latents, timestep=torch.tensor([999 - 200 * step]),
                                encoder_hidden_states=text).sample
            return {"latents": latents.flatten().tolist()}

    return Wan22Pipeline


def shard(x: torch.Tensor) -> torch.Tensor:
    if not torch.distributed.is_initialized():
        return x
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return x.chunk(world, dim=1)[rank].contiguous()


def inputs(step: int, layer: int, config: Any) -> tuple[torch.Tensor, ...]:
    """The same full-sequence tensors on every rank (seeded per call); each rank keeps its sequence shard."""
    g = torch.Generator().manual_seed(1000 * step + layer)
    shape = (BATCH, SEQ, config.num_attention_heads, config.attention_head_dim)
    q, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    text = torch.randn((BATCH, TEXT, config.num_attention_heads, config.attention_head_dim), generator=g)
    return shard(q), shard(k), shard(v), text


def main(rank: int, world: int, ulysses: int, out_path: str, model: str) -> None:
    install_cpu_platform()
    from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
    from vllm_omni.diffusion.config import set_current_diffusion_config
    from vllm_omni.diffusion.data import DiffusionParallelConfig, OmniDiffusionConfig
    from vllm_omni.diffusion.distributed import parallel_state
    from vllm_omni.diffusion.forward_context import set_forward_context
    from vllm_omni.plugins import load_omni_general_plugins

    from qcompiler.plan.format import load_plan
    from runtime.integrations import vllm_omni as plugin

    load_omni_general_plugins()  # vllm-omni's own loader: finds qcompile_plan by its entry point
    state = plugin.active_state()
    assert state is not None, "vllm-omni did not call the qcompile_plan entry point"
    plan = load_plan(os.environ[plugin.PLAN_ENV])
    parallel_state.init_distributed_environment(world_size=world, rank=rank, local_rank=rank, backend="gloo",
                                                distributed_init_method=f"tcp://127.0.0.1:{os.environ['PORT']}")
    parallel_state.initialize_model_parallel(sequence_parallel_size=ulysses, ulysses_degree=ulysses, backend="gloo")
    od_config = OmniDiffusionConfig(diffusion_kv_cache_dtype="fp8",
                                    parallel_config=DiffusionParallelConfig(ulysses_degree=ulysses))
    if model == "npu":
        install_npu_stand_ins()
    vllm_config = VllmConfig(device_config=DeviceConfig(device="cpu"))  # vllm's CustomOps read it at init
    with (set_current_vllm_config(vllm_config), set_current_diffusion_config(od_config),
          set_forward_context(omni_diffusion_config=od_config)):
        pipe = (build_wan_world(plan) if model == "wan" else build_world(plan, od_config))()
        strategies = sorted({type(m.parallel_strategy).__name__ for m in pipe.modules() if hasattr(m, "parallel_strategy")})
    batch = SimpleNamespace(sampling_params_list=[SimpleNamespace(num_inference_steps=plan.num_inference_steps)],
                            request_id=f"stack-{world}", is_dummy_run=lambda: False)
    with set_current_vllm_config(vllm_config), set_forward_context(omni_diffusion_config=od_config), torch.no_grad():
        outputs = pipe.forward(batch)
    report = state.log.last_report
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump({"calls": CALLS, "npu_calls": NPU_CALLS, "outputs": outputs, "strategies": strategies, "matches_plan": report.matches_plan(),
                   "executed": report.executed, "tagged": {c: len(v) for c, v in state.tagged.items()}}, out)
    parallel_state.destroy_distributed_env()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
