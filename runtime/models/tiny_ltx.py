"""Offline tiny LTX-Video pipeline, random weights.

`LTXPipeline` with a tiny `LTXVideoTransformer3DModel` of the real block count (28 `transformer_blocks`, each
attn1 self + attn2 cross), 2 heads x head dim 64; a tiny T5 encoder with an in-memory tokenizer; a tiny
`AutoencoderKLLTXVideo` (4x spatial, 4x temporal compression). 32x32 pixels (LTXPipeline wants multiples of 32), 9 frames -> 3 latent frames x 8x8 =
192 video tokens; 16 text tokens (padded to max length: the cross-attention mask is real).
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.models._tiny_text import TEXT_DIM, t5_encoder, t5_tokenizer

NUM_HEADS = 2
HEAD_DIM = 64
NUM_LAYERS = 28
HEIGHT = WIDTH = 32
NUM_FRAMES = 9
TEXT_TOKENS = 16
LATENT_CHANNELS = 8


def _vae():
    from diffusers import AutoencoderKLLTXVideo

    return AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()


def _transformer():
    from diffusers import LTXVideoTransformer3DModel

    return LTXVideoTransformer3DModel(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, patch_size=1, patch_size_t=1,
        num_attention_heads=NUM_HEADS, attention_head_dim=HEAD_DIM, cross_attention_dim=NUM_HEADS * HEAD_DIM,
        num_layers=NUM_LAYERS, caption_channels=TEXT_DIM,
    ).eval()


def build_tiny_pipeline(seed: int = 0):
    """A tiny `LTXPipeline` (text-to-video); the scheduler is the released config's (dynamic shifting)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline

    torch.manual_seed(seed)
    tokenizer = t5_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.95,
                                                max_shift=2.05, base_image_seq_len=1024, max_image_seq_len=4096,
                                                shift_terminal=0.1)
    pipe = LTXPipeline(scheduler=scheduler, vae=_vae(), text_encoder=t5_encoder(len(tokenizer)), tokenizer=tokenizer,
                       transformer=_transformer())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_inputs(pipe, num_inference_steps: int = 4, seed: int = 0, **extra: Any) -> dict:
    """32x32 px, 9 frames, 16 text tokens, batched CFG (guidance 3 with a negative prompt), latent output."""
    kwargs: dict[str, Any] = dict(
        prompt="a red cube", negative_prompt="blurry", height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES,
        num_inference_steps=num_inference_steps, guidance_scale=3.0, max_sequence_length=TEXT_TOKENS,
        generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
    )
    kwargs.update(extra)
    return kwargs
