"""HunyuanVideo-1.5 (HunyuanVideo15Transformer3DModel in HunyuanVideo15Pipeline).

What the HunyuanVideo-1.5 family file cannot say as data:
- guider-driven CFG: the pipeline's `ClassifierFreeGuidance` guider runs the transformer once for the prompt, then
  once for the negative prompt, each denoising step: the base class's branch mapping (cond first). The pipeline
  has no `callback_on_step_end`: steps are counted from the scheduler (runtime/step_tracker.py), never a callback;
- two attention entries in one model: HunyuanVideo15AttnProcessor2_0 (the 54 joint blocks) calls diffusers'
  `dispatch_attention_fn`, and the token refiner's generic AttnProcessor2_0 calls F.scaled_dot_product_attention
  itself (runtime/processor_entry.py reaches it); the installer picks the entry per processor;
- every joint call carries the boolean mask m[i] & m[j] over [video, image, glyph text, text] tokens (valid first,
  padding last; in text-to-video the image tokens are all padding), and every refiner call the same over the text
  tokens, repeated per head: both are padding masks, so a planned-quantized call runs quantized over each sample's
  valid tokens, and the fully masked rows of the padded tokens get what the stock attention gives them (zeros)
  (runtime/masks.py, MASK_PACK); under context parallelism there is none: diffusers 0.42.1 has no `_cp_plan` for
  this model;
- the tiny offline pipeline is runtime/models/tiny_hunyuanvideo15.py's (sizes fixed there: the family's `tiny`
  variant; the pipeline's text lengths are instance attributes it sets small).
"""

from __future__ import annotations

from typing import Any

from runtime.models import register
from runtime.models._fixed_tiny import check_tiny_fits
from runtime.models.base import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT, MASK_PACK, ModelSupport


@register
class HunyuanVideo15Support(ModelSupport):
    name = "hunyuanvideo-1.5"
    model_classes = ("HunyuanVideo15Transformer3DModel",)
    pipeline_classes = ("HunyuanVideo15Pipeline",)
    masked_kinds = ("joint", "refiner")
    mask_policy = MASK_PACK

    def processor_classes(self) -> tuple[type, ...]:
        from diffusers.models.attention_processor import AttnProcessor2_0
        from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0

        return (HunyuanVideo15AttnProcessor2_0, AttnProcessor2_0)

    def pipeline_types(self) -> tuple[type, ...]:
        from diffusers import HunyuanVideo15Pipeline

        return (HunyuanVideo15Pipeline,)

    def build_tiny(self, family: Any, *, seed: int = 0) -> Any:
        from runtime.models import tiny_hunyuanvideo15

        return check_tiny_fits(tiny_hunyuanvideo15.build_tiny_pipeline(seed), family, "tiny_hunyuanvideo15")

    # -- call arguments (report, calibrate) ------------------------------------------------------------
    # sample size: the base class's 16x16 pixels, 9 frames (the tiny pipeline's, runtime/models/tiny_hunyuanvideo15.py)

    def call_kwargs(self, pipe: Any, *, prompt: str = DEFAULT_PROMPT, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                    height: int, width: int, num_frames: int | None, steps: int, guidance_scale: float, seed: int,
                    max_length: int | None, output_type: str) -> dict[str, Any]:
        """The prompts go in as text: the pipeline encodes them (Qwen2.5-VL with its system message, ByT5 for quoted
        glyph text) with their masks, at the text lengths set on the pipeline instance. The CFG scale is the
        pipeline's `guider` component's (`ClassifierFreeGuidance(guidance_scale=...)`; `__call__` takes none):
        `guidance_scale` > 1 passes the negative prompt, which the guider runs as its unconditional forward."""
        kwargs: dict[str, Any] = dict(
            prompt=prompt, height=height, width=width, num_frames=num_frames or self.sample_frames,
            num_inference_steps=steps, generator=self.generator(seed), output_type=output_type)
        if guidance_scale > 1:
            kwargs["negative_prompt"] = negative_prompt
        return kwargs
