"""CogVideoX 2B and 5B (CogVideoXTransformer3DModel in CogVideoXPipeline).

What the CogVideoX family files cannot say as data:
- batched CFG: with guidance the pipeline stacks the negative and positive prompts into one batch, so one
  transformer forward per denoising step serves both branches (`branch` is BATCHED);
- CogVideoXAttnProcessor2_0 calls `F.scaled_dot_product_attention` itself, once per block over the text and video
  tokens together (no mask): qcompile reaches it through the processor entry (runtime/processor_entry.py), and the
  stock processor stays in place. The model has no `_cp_plan`: no context parallelism;
- its schedulers (CogVideoXDDIMScheduler for 2B, CogVideoXDPMScheduler for 5B) keep no `step_index`: the step
  tracker follows the pipeline's loop timestep (runtime/step_tracker.py). The pipeline passes `generator` and `eta`
  to `scheduler.step` only if its signature names them, which nothing in qcompile wraps;
- the text length is the transformer's `max_text_seq_length` (226 for the released models, 16 tiny: the 2B's
  sin-cos positions are sized for it), prompts are encoded as the pipeline does (T5, padded, no mask);
- the tiny offline pipelines are runtime/models/tiny_cogvideox.py's (sizes fixed there: the families' `tiny`
  variants, 2B and 5B).
"""

from __future__ import annotations

from typing import Any

from runtime.models import register
from runtime.models._fixed_tiny import check_tiny_fits
from runtime.models.base import BATCHED, ModelSupport


@register
class CogVideoXSupport(ModelSupport):
    name = "cogvideox"
    model_classes = ("CogVideoXTransformer3DModel",)
    pipeline_classes = ("CogVideoXPipeline",)

    def branch(self, forward_in_step: int) -> str:
        return BATCHED

    def processor_classes(self) -> tuple[type, ...]:
        from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

        return (CogVideoXAttnProcessor2_0,)

    def pipeline_types(self) -> tuple[type, ...]:
        from diffusers import CogVideoXPipeline

        return (CogVideoXPipeline,)

    def build_tiny(self, family: Any, *, seed: int = 0) -> Any:
        from runtime.models import tiny_cogvideox

        # the 5B differs in blocks, RoPE and scheduler; the family name is what tells them apart
        variant = "5b" if "5b" in family.name else "2b"
        return check_tiny_fits(tiny_cogvideox.build_tiny_pipeline(seed, variant=variant), family, "tiny_cogvideox")

    def text_tokens(self, pipe: Any, *, tiny: bool) -> int:
        """The transformer's `max_text_seq_length`: the length its text positions are built for."""
        return int(pipe.transformer.config.max_text_seq_length)

    def encode_prompts(self, pipe: Any, prompt: str, negative_prompt: str, max_length: int) -> tuple[Any, Any]:
        """T5 embeddings padded to `max_length`, as CogVideoXPipeline._get_t5_prompt_embeds makes them (no mask), without
        its truncation warning."""
        import torch

        out = []
        for text in (prompt, negative_prompt):
            tokens = pipe.tokenizer([text], padding="max_length", max_length=max_length, truncation=True,
                                    add_special_tokens=True, return_tensors="pt")
            with torch.no_grad():
                embeds = pipe.text_encoder(tokens.input_ids.to(pipe.text_encoder.device))[0]
            out.append(embeds.to(dtype=pipe.text_encoder.dtype))
        return out[0], out[1]
