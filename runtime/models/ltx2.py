"""LTX-2 audio-video (LTX2VideoTransformer3DModel in LTX2Pipeline).

What the LTX-2 family file cannot say as data:
- three transformer forwards per denoising step at the pipeline's defaults: the batched CFG pair (negative and
  positive prompt in one batch of 2; the positive alone when CFG is off), a spatio-temporal-guidance forward
  (`stg_scale > 0`) and a modality-isolation forward (`modality_scale > 1`), each batch 1 on the positive prompt
  (`branch`: BATCHED, then COND); the modality-isolation forward skips `audio_to_video_attn` and
  `video_to_audio_attn`, so its call list is shorter (plans are per (step, layer) cell, so every call present
  follows its cell);
- LTX2AudioVideoAttnProcessor calls diffusers' `dispatch_attention_fn` in all six attention modules of a block:
  qcompile's backend is installed on the processor;
- the two text cross-attentions (attn2, audio_attn2) carry the connectors' mask on every call as an additive bias
  ([B, H, 1, S_text]); with the connectors' learnable registers it is all zeros (padding is replaced, nothing is
  masked), a padding mask that drops no key (runtime/masks.py), so planned-quantized text calls run quantized
  (MASK_PACK); the self and cross-modal kinds get no mask in text-to-video;
- the tiny offline pipeline is runtime/models/tiny_ltx2.py's (sizes fixed there: the family's `tiny` variant);
- call arguments (report, calibrate): the prompt strings, which the pipeline encodes itself (Gemma and the
  connectors; no text-cleaning dependency), `guidance_scale` its video CFG scale, the other guidance terms
  (STG, modality isolation, audio CFG) at the pipeline's defaults; 1024 text tokens for a real pipeline.
"""

from __future__ import annotations

from typing import Any

from runtime.models import register
from runtime.models._fixed_tiny import check_tiny_fits
from runtime.models.base import (
    BATCHED,
    COND,
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_PROMPT,
    MASK_PACK,
    ModelSupport,
)

REAL_TEXT_TOKENS = 1024  # LTX2Pipeline's max_sequence_length default


@register
class LTX2Support(ModelSupport):
    name = "ltx-2"
    model_classes = ("LTX2VideoTransformer3DModel",)
    pipeline_classes = ("LTX2Pipeline",)
    masked_kinds = ("video_text", "audio_text")
    mask_policy = MASK_PACK

    def branch(self, forward_in_step: int) -> str:
        return BATCHED if forward_in_step == 1 else COND

    def processor_classes(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_ltx2 import LTX2AudioVideoAttnProcessor

        return (LTX2AudioVideoAttnProcessor,)

    def pipeline_types(self) -> tuple[type, ...]:
        from diffusers import LTX2Pipeline

        return (LTX2Pipeline,)

    def build_tiny(self, family: Any, *, seed: int = 0) -> Any:
        from runtime.models import tiny_ltx2

        return check_tiny_fits(tiny_ltx2.build_tiny_pipeline(seed), family, "tiny_ltx2")

    # -- call arguments (report, calibrate) ------------------------------------------------------------
    sample_size = (64, 64)  # the tiny pipeline's (runtime/models/tiny_ltx2.py): multiples of the VAE's 32

    def text_tokens(self, pipe: Any, *, tiny: bool) -> int | None:
        from runtime.models import tiny_ltx2

        return tiny_ltx2.TEXT_TOKENS if tiny else REAL_TEXT_TOKENS

    def call_kwargs(self, pipe: Any, *, prompt: str = DEFAULT_PROMPT, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                    height: int, width: int, num_frames: int | None, steps: int, guidance_scale: float, seed: int,
                    max_length: int | None, output_type: str) -> dict[str, Any]:
        return dict(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                    num_frames=num_frames or self.sample_frames, num_inference_steps=steps,
                    guidance_scale=guidance_scale, generator=self.generator(seed),
                    max_sequence_length=max_length or self.text_tokens(pipe, tiny=False), output_type=output_type)
