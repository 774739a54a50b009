"""LTX-Video (LTXVideoTransformer3DModel in LTXPipeline).

What the LTX-Video family file cannot say as data:
- batched CFG: with guidance the pipeline stacks the negative and positive prompts into one batch, so one
  transformer forward per denoising step serves both branches (`branch` is BATCHED);
- LTXVideoAttnProcessor calls diffusers' `dispatch_attention_fn` for both kinds: qcompile's backend is installed
  on the processor;
- cross-attention (attn2) carries the text mask on every call as an additive bias, `(1 - mask) * -10000.0` in
  the hidden dtype, repeated per head ([B, N, 1, S_text]): a padding mask whose -10000 provably gives the padded
  tokens exactly zero weight (runtime/masks.py checks it per call against the scores' bound), so a planned
  quantized cross call runs quantized over each sample's valid text tokens (MASK_PACK), never with its mask
  dropped, and the report counts it as packed (the shipped recipe still keeps cross native: 1.7% of the FLOPs);
  self-attention (attn1) has no mask;
- the tiny offline pipeline is runtime/models/tiny_ltx.py's (sizes fixed there: the family's `tiny` variant).
"""

from __future__ import annotations

from typing import Any

from runtime.models import register
from runtime.models._fixed_tiny import check_tiny_fits
from runtime.models.base import BATCHED, DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT, MASK_PACK, ModelSupport

REAL_TEXT_TOKENS = 128  # LTXPipeline's max_sequence_length default (T5)


@register
class LTXVideoSupport(ModelSupport):
    name = "ltx-video"
    model_classes = ("LTXVideoTransformer3DModel",)
    pipeline_classes = ("LTXPipeline",)
    masked_kinds = ("cross",)
    mask_policy = MASK_PACK

    def branch(self, forward_in_step: int) -> str:
        return BATCHED

    def processor_classes(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor

        return (LTXVideoAttnProcessor,)

    def pipeline_types(self) -> tuple[type, ...]:
        from diffusers import LTXPipeline

        return (LTXPipeline,)

    def build_tiny(self, family: Any, *, seed: int = 0) -> Any:
        from runtime.models import tiny_ltx

        return check_tiny_fits(tiny_ltx.build_tiny_pipeline(seed), family, "tiny_ltx")

    # -- call arguments (report, calibrate) ------------------------------------------------------------
    sample_size = (32, 32)  # the tiny pipeline's (runtime/models/tiny_ltx.py): LTXPipeline takes multiples of 32

    def text_tokens(self, pipe: Any, *, tiny: bool) -> int | None:
        from runtime.models import tiny_ltx

        return tiny_ltx.TEXT_TOKENS if tiny else REAL_TEXT_TOKENS

    def call_kwargs(self, pipe: Any, *, prompt: str = DEFAULT_PROMPT, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                    height: int, width: int, num_frames: int | None, steps: int, guidance_scale: float, seed: int,
                    max_length: int | None, output_type: str) -> dict[str, Any]:
        """Batched CFG above guidance_scale 1 (negative and positive prompt in one forward); the T5 embeddings
        and their attention masks (the cross-attention's text mask) are encoded once here, as the pipeline would."""
        import torch

        max_length = max_length or self.text_tokens(pipe, tiny=False)
        with torch.no_grad():
            embeds, mask, negative, negative_mask = pipe.encode_prompt(
                prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=guidance_scale > 1,
                max_sequence_length=max_length, device=pipe._execution_device)
        kwargs: dict[str, Any] = dict(
            prompt_embeds=embeds, prompt_attention_mask=mask, height=height, width=width,
            num_frames=num_frames or self.sample_frames, num_inference_steps=steps, guidance_scale=guidance_scale,
            generator=self.generator(seed), max_sequence_length=max_length, output_type=output_type)
        if negative is not None:
            kwargs.update(negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask)
        return kwargs
