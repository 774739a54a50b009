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
- the tiny offline pipeline is runtime/models/tiny_ltx2.py's (sizes fixed there: the family's `tiny` variant).
"""

from __future__ import annotations

from typing import Any

from runtime.models import register
from runtime.models._fixed_tiny import check_tiny_fits
from runtime.models.base import BATCHED, COND, MASK_PACK, ModelSupport


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
