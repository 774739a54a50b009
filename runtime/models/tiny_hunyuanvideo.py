"""Offline tiny HunyuanVideo (1.0) pipeline (text-to-video), random weights.

`HunyuanVideoPipeline` with a tiny `HunyuanVideoTransformer3DModel` of the real block counts (20 dual-stream
`transformer_blocks`, 40 single-stream `single_transformer_blocks`, a 2-block token refiner
`context_embedder.token_refiner.refiner_blocks`), 2 heads x head dim 64; a tiny `LlamaModel` (3 layers: the
pipeline reads the hidden states 2 layers below the top) with a byte-level BPE tokenizer (no merges), a tiny CLIP
text model for the pooled projection, and a tiny `AutoencoderKLHunyuanVideo`.

The pipeline's default prompt template crops a fixed 95 tokens of Llama-3's tokenization; the tiny tokenizer
splits differently, so `tiny_inputs` passes a short template whose crop is counted by the pipeline itself
(`crop_start: None`). 32x32 pixels, 5 frames -> 2 latent frames x 2x2 patches (8x spatial, 4x temporal VAE
compression, 2x2 patches) = 8 video tokens; 16 Llama tokens, padding masked in every joint and single call.
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.models._tiny_text import TEXT_DIM, clip_text_encoder, clip_tokenizer, qwen_tokenizer

NUM_HEADS = 2
HEAD_DIM = 64
NUM_LAYERS = 20
NUM_SINGLE_LAYERS = 40
NUM_REFINER_LAYERS = 2
HEIGHT = WIDTH = 32
NUM_FRAMES = 5
LATENT_CHANNELS = 4
TEXT_TOKENS = 16
# The template the tiny pipeline is called with: Llama-3's layout, short. With `crop_start` None the pipeline
# tokenizes the template alone and crops that many tokens (less the 2 of the `{}` placeholder's neighbours).
PROMPT_TEMPLATE = {
    "template": "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>",
    "crop_start": None,
}


def _text_encoder(vocab_size: int):
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaModel(config).eval()


def _vae():
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(latent_channels=LATENT_CHANNELS, block_out_channels=(8, 8, 8, 8),
                                     layers_per_block=1, norm_num_groups=4).eval()


def _transformer():
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_attention_heads=NUM_HEADS,
        attention_head_dim=HEAD_DIM, num_layers=NUM_LAYERS, num_single_layers=NUM_SINGLE_LAYERS,
        num_refiner_layers=NUM_REFINER_LAYERS, text_embed_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
        rope_axes_dim=(16, 24, 24),  # sums to the head dim, as (16, 56, 56) does for 128
    ).eval()


def build_tiny_pipeline(seed: int = 0):
    """A tiny `HunyuanVideoPipeline` (guidance-distilled: one forward per step unless true CFG is asked for)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>",
                                                                "<|eot_id|>"]})
    tokenizer_2 = clip_tokenizer()
    pipe = HunyuanVideoPipeline(
        text_encoder=_text_encoder(len(tokenizer)), tokenizer=tokenizer, transformer=_transformer(), vae=_vae(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip_text_encoder(len(tokenizer_2)),
        tokenizer_2=tokenizer_2,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_inputs(pipe, num_inference_steps: int = 4, seed: int = 0, **extra: Any) -> dict:
    """32x32 px, 5 frames, 16 text tokens (the prompt is shorter: the padded ones are masked), the embedded
    guidance, latent output."""
    kwargs: dict[str, Any] = dict(
        prompt="a red cube", height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES,
        num_inference_steps=num_inference_steps, generator=torch.Generator("cpu").manual_seed(seed),
        prompt_template=PROMPT_TEMPLATE, max_sequence_length=TEXT_TOKENS, output_type="latent",
    )
    kwargs.update(extra)
    return kwargs
