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
from runtime.models.base import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT, MASK_PACK, ModelSupport, ModelSupportError


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

    # -- call arguments (report, calibrate) ------------------------------------------------------------
    sample_size = (32, 32)  # the tiny pipeline's (runtime/models/tiny_qwenimage.py)

    def call_kwargs(self, pipe: Any, *, prompt: str = DEFAULT_PROMPT, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                    height: int, width: int, num_frames: int | None, steps: int, guidance_scale: float, seed: int,
                    max_length: int | None, output_type: str) -> dict[str, Any]:
        """True CFG: `guidance_scale` is `true_cfg_scale`; above 1 the negative prompt gets its own forward each
        step. The prompts go in as text: the pipeline encodes them with its own template and text mask (it drops
        an all-ones mask, and warns when given embeddings without one); the text length is the prompt's
        (`max_length` only truncates)."""
        _no_frames(pipe, num_frames)
        kwargs: dict[str, Any] = dict(
            prompt=prompt, true_cfg_scale=guidance_scale, height=height, width=width, num_inference_steps=steps,
            generator=self.generator(seed), output_type=output_type)
        if guidance_scale > 1:
            kwargs["negative_prompt"] = negative_prompt
        if max_length is not None:
            kwargs["max_sequence_length"] = max_length
        return kwargs

def _no_frames(pipe: Any, num_frames: int | None) -> None:
    if num_frames is not None:
        raise ModelSupportError(f"{type(pipe).__name__} generates images: num_frames={num_frames} does not apply "
                                "(pass num_frames=None)")
