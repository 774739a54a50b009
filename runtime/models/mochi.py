"""Mochi 1 (MochiTransformer3DModel in MochiPipeline).

What the Mochi 1 family file cannot say as data:
- batched CFG: with guidance the pipeline stacks the negative and positive prompts into one batch, so one
  transformer forward per denoising step serves both branches (`branch` is BATCHED);
- MochiAttnProcessor2_0 calls `F.scaled_dot_product_attention` itself, once per sample (batch 1) in a loop over
  the batch, over the video tokens and that sample's valid text tokens only: the processor entry serves each call
  as the same (step, layer) cell, so a forward counts B calls per cell (runtime/processor_entry.py). Its
  MochiAttention has no `set_processor`; the installer takes it for its processor (runtime/install.py);
- no mask reaches attention: the processor drops each sample's text padding itself (`masked_kinds` is empty);
- the denoising loop sets the pipeline's current timestep to `1000 - t`, not `t` (`current_timesteps`, the step
  tracker's cross-check);
- the tiny offline pipeline is runtime/models/tiny_mochi.py's (sizes fixed there: the family's `tiny` variant).
"""

from __future__ import annotations

from typing import Any

from runtime.models import register
from runtime.models._fixed_tiny import check_tiny_fits
from runtime.models.base import BATCHED, DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT, ModelSupport

REAL_TEXT_TOKENS = 256  # MochiPipeline's max_sequence_length default (T5)
# MochiPipeline's loop: `self._current_timestep = 1000 - t` (a literal there, not the scheduler's config)
TIMESTEP_REFLECTION = 1000


@register
class MochiSupport(ModelSupport):
    name = "mochi-1"
    model_classes = ("MochiTransformer3DModel",)
    pipeline_classes = ("MochiPipeline",)
    masked_kinds = ()

    def branch(self, forward_in_step: int) -> str:
        return BATCHED

    def current_timesteps(self, timesteps: Any) -> Any:
        return TIMESTEP_REFLECTION - timesteps

    def processor_classes(self) -> tuple[type, ...]:
        from diffusers.models.attention_processor import MochiAttnProcessor2_0

        return (MochiAttnProcessor2_0,)

    def pipeline_types(self) -> tuple[type, ...]:
        from diffusers import MochiPipeline

        return (MochiPipeline,)

    def build_tiny(self, family: Any, *, seed: int = 0) -> Any:
        from runtime.models import tiny_mochi

        return check_tiny_fits(tiny_mochi.build_tiny_pipeline(seed), family, "tiny_mochi")

    # -- call arguments (report, calibrate) ------------------------------------------------------------
    sample_size = (32, 32)  # the tiny pipeline's (runtime/models/tiny_mochi.py)
    sample_frames = 7  # 6x temporal compression: 2 latent frames

    def text_tokens(self, pipe: Any, *, tiny: bool) -> int | None:
        from runtime.models import tiny_mochi

        return tiny_mochi.TEXT_TOKENS if tiny else REAL_TEXT_TOKENS

    def call_kwargs(self, pipe: Any, *, prompt: str = DEFAULT_PROMPT, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                    height: int, width: int, num_frames: int | None, steps: int, guidance_scale: float, seed: int,
                    max_length: int | None, output_type: str) -> dict[str, Any]:
        """Batched CFG above guidance_scale 1 (negative and positive prompt in one forward); the pipeline encodes
        the prompts itself (T5, no text cleaning)."""
        max_length = max_length or self.text_tokens(pipe, tiny=False)
        return dict(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                    num_frames=num_frames or self.sample_frames, num_inference_steps=steps,
                    guidance_scale=guidance_scale, generator=self.generator(seed), max_sequence_length=max_length,
                    output_type=output_type)
