"""SkyReels-V2 (SkyReelsV2Transformer3DModel in SkyReelsV2Pipeline and SkyReelsV2DiffusionForcingPipeline).

What the SkyReels-V2 family files cannot say as data:
- Wan2.1's layout: each denoising step runs the transformer once for the prompt, then once more for the negative
  prompt when CFG is on (the base class's branch mapping); SkyReelsV2AttnProcessor calls diffusers'
  `dispatch_attention_fn`; no call carries a mask while the transformer's `num_frame_per_block` is 1 (the
  default). Diffusion forcing with `causal_block_size > 1` makes every self-attention call carry a block-causal
  mask, which is no padding mask: planned-quantized calls then follow the plan's fallback policy;
- diffusion forcing gives every latent frame its own timestep: the loop walks the rows of a step matrix (one row
  per iteration, frames stepped by per-frame scheduler copies; the pipeline's own scheduler never steps). A plan's
  step is the index of that loop iteration, and every frame computed in the iteration follows that row
  (`steps_are_loop_iterations`, read by runtime/step_tracker.py). The loop runs `num_inference_steps` iterations
  when synchronous (`ar_step=0`), `num_inference_steps + (frame blocks - 1) x ar_step` when asynchronous; a long
  video (`overlap_history`) runs one such loop per chunk, each starting again at the plan's step 0;
- the tiny offline pipelines are runtime/models/tiny_skyreels_v2.py's (sizes fixed there: the families' `tiny`
  variant);
- call arguments (report, calibrate): the base class's embeddings call, with UMT5 embeddings encoded here as the
  pipelines make them (padding zeroed) without their `ftfy` text cleaning, 512 tokens for a real pipeline.
"""

from __future__ import annotations

from typing import Any

from runtime.models import register
from runtime.models._fixed_tiny import check_tiny_fits
from runtime.models.base import ModelSupport

T2V, DF = "SkyReelsV2Pipeline", "SkyReelsV2DiffusionForcingPipeline"
REAL_TEXT_TOKENS = 512  # the pipelines' max_sequence_length default


class _SkyReelsV2Calls(ModelSupport):
    """How both SkyReels-V2 pipelines are called: Wan's embeddings call (the base class's `call_kwargs`)."""

    def text_tokens(self, pipe: Any, *, tiny: bool) -> int | None:
        from runtime.models import tiny_skyreels_v2

        return tiny_skyreels_v2.TEXT_TOKENS if tiny else REAL_TEXT_TOKENS

    def encode_prompts(self, pipe: Any, prompt: str, negative_prompt: str, max_length: int) -> tuple[Any, Any]:
        from runtime.models import tiny_skyreels_v2

        return (tiny_skyreels_v2.encode(pipe, prompt, max_length),
                tiny_skyreels_v2.encode(pipe, negative_prompt, max_length))


def _processor_classes() -> tuple[type, ...]:
    from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2AttnProcessor

    return (SkyReelsV2AttnProcessor,)


@register
class SkyReelsV2Support(_SkyReelsV2Calls):
    name = "skyreels-v2"
    model_classes = ("SkyReelsV2Transformer3DModel",)
    pipeline_classes = (T2V,)

    def processor_classes(self) -> tuple[type, ...]:
        return _processor_classes()

    def pipeline_types(self) -> tuple[type, ...]:
        from diffusers import SkyReelsV2Pipeline

        return (SkyReelsV2Pipeline,)

    def build_tiny(self, family: Any, *, seed: int = 0) -> Any:
        from runtime.models import tiny_skyreels_v2

        return check_tiny_fits(tiny_skyreels_v2.build_tiny_pipeline(seed), family, "tiny_skyreels_v2")


@register
class SkyReelsV2DiffusionForcingSupport(_SkyReelsV2Calls):
    """The diffusion-forcing pipeline (found by its pipeline class; the transformer class is SkyReelsV2Support's)."""

    name = "skyreels-v2-diffusion-forcing"
    pipeline_classes = (DF,)
    masked_kinds = ("self",)  # only with causal_block_size > 1: a block-causal mask, served by the fallback policy
    steps_are_loop_iterations = True

    def processor_classes(self) -> tuple[type, ...]:
        return _processor_classes()

    def pipeline_types(self) -> tuple[type, ...]:
        from diffusers import SkyReelsV2DiffusionForcingPipeline

        return (SkyReelsV2DiffusionForcingPipeline,)

    def build_tiny(self, family: Any, *, seed: int = 0) -> Any:
        from runtime.models import tiny_skyreels_v2

        return check_tiny_fits(tiny_skyreels_v2.build_tiny_pipeline(seed, diffusion_forcing=True), family,
                               "tiny_skyreels_v2")

    def call_kwargs(self, pipe: Any, **request: Any) -> dict[str, Any]:
        """The embeddings call, plus `prompt=None`: this pipeline's `__call__` takes `prompt` positionally with no
        default."""
        return {"prompt": None, **super().call_kwargs(pipe, **request)}
