"""Offline tiny Qwen-Image pipeline, random weights.

`QwenImagePipeline` with a tiny `QwenImageTransformer2DModel` of the real block count (60 dual-stream
`transformer_blocks`, joint attention), 2 heads x head dim 64; a tiny `Qwen2_5_VLForConditionalGeneration` text
encoder from a config and a byte-level BPE tokenizer with no merges (one token per byte); a tiny
`AutoencoderKLQwenImage`. 32x32 pixels -> 8x8 latents -> 2x2 patches = 16 image tokens.

The real prompt template is ~170 bytes long here (one token per byte), so the tiny pipeline uses a short one
(`prompt_template_encode` / `prompt_template_encode_start_idx` are instance attributes, not saved with
`save_pretrained`): text tokens = the prompt's bytes + 12 template tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.models._tiny_text import TEXT_DIM, qwen25vl_text_config, qwen_tokenizer

NUM_HEADS = 2
HEAD_DIM = 64
NUM_LAYERS = 60
HEIGHT = WIDTH = 32
LATENT_CHANNELS = 4
PROMPT_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def _text_encoder(tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=qwen25vl_text_config(len(tokenizer)),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=TEXT_DIM),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _vae():
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(base_dim=24, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 4], num_res_blocks=1,
                                  temperal_downsample=[False, True], latents_mean=[0.0] * LATENT_CHANNELS,
                                  latents_std=[1.0] * LATENT_CHANNELS).eval()


def _transformer():
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(
        patch_size=2, in_channels=4 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_layers=NUM_LAYERS,
        attention_head_dim=HEAD_DIM, num_attention_heads=NUM_HEADS, joint_attention_dim=TEXT_DIM,
        axes_dims_rope=(16, 24, 24),
    ).eval()


def build_tiny_pipeline(seed: int = 0):
    """A tiny `QwenImagePipeline` (true CFG: separate conditional and unconditional forwards)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    # The released scheduler config: exponential time shift, dynamic shifting from the image sequence length.
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
        max_image_seq_len=8192, time_shift_type="exponential", shift_terminal=0.02,
    )
    pipe = QwenImagePipeline(scheduler=scheduler, vae=_vae(), text_encoder=_text_encoder(tokenizer),
                             tokenizer=tokenizer, transformer=_transformer())
    pipe.prompt_template_encode = PROMPT_TEMPLATE
    pipe.prompt_template_encode_start_idx = len(tokenizer("<|im_start|>user\n").input_ids)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_inputs(pipe, num_inference_steps: int = 4, seed: int = 0, **extra: Any) -> dict:
    """32x32 px, true CFG (true_cfg_scale 4 with a negative prompt: two forwards per step), latent output.

    One prompt per forward: the pipeline drops an all-ones text mask, so the joint attention gets no mask. Pass
    `prompt=[short, long]` (unequal lengths in one batch) to get a padded text mask.
    """
    kwargs: dict[str, Any] = dict(
        prompt="a red cube", negative_prompt="blurry", height=HEIGHT, width=WIDTH,
        num_inference_steps=num_inference_steps, true_cfg_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
    )
    kwargs.update(extra)
    return kwargs
