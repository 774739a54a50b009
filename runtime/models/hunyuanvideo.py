"""HunyuanVideo 1.0 (HunyuanVideoTransformer3DModel in HunyuanVideoPipeline).

What the HunyuanVideo family file cannot say as data:
- guidance-distilled: the guidance scale is embedded, one transformer forward per denoising step serves the prompt
  (the base class's branch mapping); with `true_cfg_scale > 1` and a negative prompt the pipeline runs a second,
  unconditional forward, as the default mapping says;
- two attention entries in one model: HunyuanVideoAttnProcessor2_0 (20 joint and 40 single blocks) calls
  diffusers' `dispatch_attention_fn`; the token refiner's generic AttnProcessor2_0 calls
  F.scaled_dot_product_attention itself (runtime/processor_entry.py reaches it); the installer picks the entry per
  processor;
- every joint and single call carries a [B, 1, 1, N] key-padding mask over [video, text] (the padded text tokens):
  a planned-quantized call runs quantized over each sample's valid keys (runtime/masks.py, MASK_PACK). The refiner's
  mask is m[i] & m[j] with key 0 always kept (padded query rows attend the first token only): not a padding mask,
  so a planned-quantized refiner call follows the plan's fallback policy (the shipped recipe keeps the refiner
  native). diffusers 0.42.1 has no `_cp_plan` for this model: no context parallelism;
- the tiny offline pipeline is runtime/models/tiny_hunyuanvideo.py's (sizes fixed there: the family's `tiny`
  variant).
"""

from __future__ import annotations

from typing import Any

from runtime.models import register
from runtime.models._fixed_tiny import check_tiny_fits
from runtime.models.base import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT, MASK_PACK, ModelSupport

REAL_TEXT_TOKENS = 256  # HunyuanVideoPipeline's max_sequence_length default (Llama tokens after the template crop)


@register
class HunyuanVideoSupport(ModelSupport):
    name = "hunyuanvideo"
    model_classes = ("HunyuanVideoTransformer3DModel",)
    pipeline_classes = ("HunyuanVideoPipeline",)
    masked_kinds = ("joint", "single", "refiner")
    mask_policy = MASK_PACK

    def processor_classes(self) -> tuple[type, ...]:
        from diffusers.models.attention_processor import AttnProcessor2_0
        from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

        return (HunyuanVideoAttnProcessor2_0, AttnProcessor2_0)

    def pipeline_types(self) -> tuple[type, ...]:
        from diffusers import HunyuanVideoPipeline

        return (HunyuanVideoPipeline,)

    def build_tiny(self, family: Any, *, seed: int = 0) -> Any:
        from runtime.models import tiny_hunyuanvideo

        return check_tiny_fits(tiny_hunyuanvideo.build_tiny_pipeline(seed), family, "tiny_hunyuanvideo")

    # -- call arguments (report, calibrate) ------------------------------------------------------------
    sample_size = (32, 32)  # the tiny pipeline's (runtime/models/tiny_hunyuanvideo.py): 8x VAE, 2x2 patches
    sample_frames = 5

    def text_tokens(self, pipe: Any, *, tiny: bool) -> int | None:
        from runtime.models import tiny_hunyuanvideo

        return tiny_hunyuanvideo.TEXT_TOKENS if tiny else REAL_TEXT_TOKENS

    def call_kwargs(self, pipe: Any, *, prompt: str = DEFAULT_PROMPT, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                    height: int, width: int, num_frames: int | None, steps: int, guidance_scale: float, seed: int,
                    max_length: int | None, output_type: str) -> dict[str, Any]:
        """Guidance-distilled: `guidance_scale` is the embedded guidance, one forward per step (no negative prompt).
        The prompt goes in as text under the pipeline's own prompt template; the template's crop (the pipeline's
        default hard-codes 95, Llama-3's count) is counted with this pipeline's tokenizer, so the tiny
        tokenizer crops exactly the template too."""
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

        template = DEFAULT_PROMPT_TEMPLATE["template"]
        # the template alone, less its "{}" placeholder and the closing <|eot_id|>: what the pipeline crops
        crop_start = len(pipe.tokenizer(template.split("{}")[0]).input_ids)
        return dict(
            prompt=prompt, height=height, width=width, num_frames=num_frames or self.sample_frames,
            num_inference_steps=steps, guidance_scale=guidance_scale, generator=self.generator(seed),
            prompt_template={"template": template, "crop_start": crop_start},
            max_sequence_length=max_length or REAL_TEXT_TOKENS, output_type=output_type)
