"""Qwen-Image (QwenImageTransformer2DModel in QwenImagePipeline).

What the Qwen-Image family file cannot say as data:
- true CFG: each denoising step runs the transformer for the prompt, then (true_cfg_scale > 1 with a negative
  prompt) once more for the negative prompt, each with its own text length: the base class's branch mapping;
- QwenDoubleStreamAttnProcessor2_0 calls diffusers' `dispatch_attention_fn`: qcompile's backend is installed on
  the processor;
- the joint attention carries a key-padding mask ([B, 1, 1, S_text + S_image] bool, image tokens always valid)
  only when prompts of unequal length share a batch (the pipeline drops an all-ones mask): a planned-quantized
  masked call runs quantized over each sample's valid tokens (runtime/masks.py packs them; MASK_PACK), never with
  its mask dropped, and the report counts it as packed; under context parallelism it runs the stock attention,
  counted as fallback;
- the tiny offline pipeline is runtime/models/tiny_qwenimage.py's (sizes fixed there: the family's `tiny` variant).
"""

from __future__ import annotations

from typing import Any

from runtime.models import register
from runtime.models._fixed_tiny import check_tiny_fits
from runtime.models.base import MASK_PACK, ModelSupport


@register
class QwenImageSupport(ModelSupport):
    name = "qwen-image"
    model_classes = ("QwenImageTransformer2DModel",)
    pipeline_classes = ("QwenImagePipeline",)
    masked_kinds = ("joint",)  # only with unequal prompts in one batch
    mask_policy = MASK_PACK

    def processor_classes(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0

        return (QwenDoubleStreamAttnProcessor2_0,)

    def pipeline_types(self) -> tuple[type, ...]:
        from diffusers import QwenImagePipeline

        return (QwenImagePipeline,)

    def build_tiny(self, family: Any, *, seed: int = 0) -> Any:
        from runtime.models import tiny_qwenimage

        return check_tiny_fits(tiny_qwenimage.build_tiny_pipeline(seed), family, "tiny_qwenimage")
