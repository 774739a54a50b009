"""Offline tiny Mochi 1 pipeline (text-to-video), random weights.

`MochiPipeline` with a tiny `MochiTransformer3DModel` of the real block count (48 `transformer_blocks`, the last
`context_pre_only`), 2 heads x head dim 64, a tiny T5 encoder over the in-memory T5 tokenizer of
runtime/models/_tiny_text.py and a tiny `AutoencoderKLMochi` (never run: latent output; the pipeline's 8x spatial,
6x temporal factors are constants of the pipeline). 32x32 pixels, 7 frames -> 2 latent frames x 2 x 2 patches = 8
video tokens; 16 T5 tokens, each sample's attention over its valid ones only (the processor drops the padding).

runtime.load serves it (runtime/models/mochi.py); tests/runtime/models/test_mochi_runtime.py runs plans on it.
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.models._tiny_text import TEXT_DIM, t5_encoder, t5_tokenizer

NUM_HEADS = 2
HEAD_DIM = 64
NUM_LAYERS = 48
HEIGHT = WIDTH = 32
NUM_FRAMES = 7
TEXT_TOKENS = 16
LATENT_CHANNELS = 12


def _vae():
    from diffusers import AutoencoderKLMochi

    # group norms of 32 groups: 32 channels is the narrowest
    return AutoencoderKLMochi(encoder_block_out_channels=(32, 32, 32, 32), decoder_block_out_channels=(32, 32, 32, 32),
                              layers_per_block=(1, 1, 1, 1, 1), add_attention_block=(False,) * 5).eval()


def _transformer():
    from diffusers import MochiTransformer3DModel

    return MochiTransformer3DModel(
        patch_size=2, num_attention_heads=NUM_HEADS, attention_head_dim=HEAD_DIM, num_layers=NUM_LAYERS,
        pooled_projection_dim=16, in_channels=LATENT_CHANNELS, text_embed_dim=TEXT_DIM, time_embed_dim=32,
        max_sequence_length=TEXT_TOKENS,
    ).eval()


def build_tiny_pipeline(seed: int = 0):
    """A tiny `MochiPipeline` (batched CFG: one forward per step with batch 2)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline

    torch.manual_seed(seed)
    tokenizer = t5_tokenizer()
    pipe = MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(),
                         text_encoder=t5_encoder(len(tokenizer)), tokenizer=tokenizer, transformer=_transformer())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_inputs(pipe, num_inference_steps: int = 4, seed: int = 0, **extra: Any) -> dict:
    """32x32 px, 7 frames, 16 T5 tokens (the prompts are shorter: padding dropped per sample), CFG, latent out."""
    kwargs: dict[str, Any] = dict(
        prompt="a red cube", negative_prompt="blurry", height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES,
        num_inference_steps=num_inference_steps, generator=torch.Generator("cpu").manual_seed(seed),
        max_sequence_length=TEXT_TOKENS, output_type="latent",
    )
    kwargs.update(extra)
    return kwargs
