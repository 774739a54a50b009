"""Offline tiny Wan pipelines with random weights, shaped like the real families (same components, layer counts
and attention kinds; small widths from the family's `tiny` variant, head dim 64 so the FP8 path runs).

Nothing is downloaded: the text side is an in-memory Unigram T5 tokenizer and a tiny random T5 encoder; Wan2.1
I2V's image side is a tiny random CLIP vision encoder with a CLIPImageProcessor built in code.
`save_tiny_pipeline` / `load_tiny_pipeline` round-trip one through a folder with `from_pretrained`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qcompiler.families import Family, get_family

TINY_VARIANT = "tiny"
# Small sizes shared by every tiny pipeline; only the transformers' head layout comes from the family data.
TEXT_DIM = 32
TEXT_TOKENS = 16
FFN_DIM = 32
HEIGHT = WIDTH = 16
NUM_FRAMES = 9
LATENT_CHANNELS = 16
# Wan2.1 I2V's attention processor splits cross-attention context at a hard-coded 512 text tokens (diffusers
# WanAttnProcessor: "512 is the context length of the text encoder"), so its tiny pipeline runs 512 text tokens.
WAN21_I2V_TEXT_TOKENS = 512
# The tiny CLIP vision tower: 32x32 input, 16x16 patches -> 4 patch tokens + 1 class token = 5 image tokens.
IMAGE_DIM = 32
IMAGE_SIZE = 32
IMAGE_PATCH = 16


@dataclass(frozen=True)
class TinyInputs:
    """Keyword arguments for one tiny pipeline call (image only for image-to-video pipelines)."""

    kwargs: dict[str, Any]


def _tokenizer():
    from transformers import T5Tokenizer

    # An in-memory Unigram vocabulary: special tokens, the word-start marker, single characters and
    # word-start letters. Enough to tokenize any ASCII prompt without a download.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + ".,!?'-"]
    pieces += [(f"\u2581{c}", -2.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=8)


def _text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    # UMT5 is what the real Wan pipelines use; widths are tiny.
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()


def _vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=3, z_dim=LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


def _image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=IMAGE_SIZE, patch_size=IMAGE_PATCH)
    return CLIPVisionModel(config).eval()


def _image_processor():
    try:  # transformers >= 5 warns that CLIPImageProcessor without torchvision falls back to this one
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _transformer(num_layers: int, num_heads: int, head_dim: int, in_channels: int, image_dim: int | None = None):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        in_channels=in_channels,
        out_channels=LATENT_CHANNELS,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=FFN_DIM,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        # Wan2.1 I2V: CLIP image tokens enter cross-attention through their own K/V projections of width dim.
        image_dim=image_dim,
        added_kv_proj_dim=num_heads * head_dim if image_dim is not None else None,
    ).eval()


def is_ti2v_style(family: Family) -> bool:
    """TI2V-5B feeds one timestep per token (`expand_timesteps`); no family field says so, the name does."""
    return "ti2v" in family.name


def tiny_family(family_name: str) -> Family:
    return get_family(family_name, TINY_VARIANT)


def build_tiny_pipeline(family_name: str, *, seed: int = 0, family: Family | None = None):
    """A diffusers pipeline of `family_name`'s tiny variant with seeded random weights.

    `family` overrides the looked-up family (e.g. one from $QCOMPILE_FAMILY_PATH with other widths).
    """
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline

    family = family or tiny_family(family_name)
    image_to_video = family.pipeline_class == "WanImageToVideoPipeline"
    if family.pipeline_class not in ("WanPipeline", "WanImageToVideoPipeline"):
        raise ValueError(f"no tiny builder for pipeline class {family.pipeline_class} (family {family.name})")
    # Wan2.1 I2V (one expert) conditions on CLIP image tokens too; Wan2.2 I2V has no image encoder.
    clip_image = image_to_video and family.boundary_ratio is None
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    text_encoder = _text_encoder(len(tokenizer))
    vae = _vae()
    # I2V conditions on 4 mask channels + 16 image-latent channels next to the 16 noise channels.
    in_channels = LATENT_CHANNELS + (LATENT_CHANNELS + 4 if image_to_video else 0)
    models = {
        # a Wan transformer has one block list
        c.name: _transformer(c.block_lists[0].length, c.num_heads, c.head_dim, in_channels,
                             IMAGE_DIM if clip_image else None)
        for c in family.components
    }
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=family.flow_shift,
        num_train_timesteps=family.num_train_timesteps,
    )
    common = dict(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=models["transformer"],
        transformer_2=models.get("transformer_2"),
        boundary_ratio=family.boundary_ratio,
    )
    if image_to_video:
        pipe = WanImageToVideoPipeline(image_encoder=_image_encoder() if clip_image else None,
                                       image_processor=_image_processor() if clip_image else None, **common)
    else:
        pipe = WanPipeline(expand_timesteps=is_ti2v_style(family), **common)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_tokens(pipe) -> int:
    """Text tokens of a tiny pipeline's calls: 16, or 512 where a CLIP image encoder makes Wan2.1 I2V split at 512."""
    return WAN21_I2V_TEXT_TOKENS if getattr(pipe, "image_encoder", None) is not None else TEXT_TOKENS


def build_tiny_video_to_video_pipeline(family_name: str = "wan2.1-t2v-1.3b", *, seed: int = 0):
    """diffusers' WanVideoToVideoPipeline over the tiny text-to-video pipeline's components (it takes a video
    and `strength`; strength < 1 runs only the last steps of the schedule)."""
    from diffusers import WanVideoToVideoPipeline

    base = build_tiny_pipeline(family_name, seed=seed)
    if base.transformer_2 is not None or base.config.expand_timesteps:
        raise ValueError(f"no tiny video-to-video builder for {family_name}: WanVideoToVideoPipeline runs one "
                         "transformer with one timestep per frame")
    pipe = WanVideoToVideoPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder,
                                   transformer=base.transformer, vae=base.vae, scheduler=base.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_inputs(pipe, *, num_inference_steps: int = 4, guidance_scale: float = 5.0, seed: int = 0, **extra: Any) -> dict:
    """Call arguments for a tiny pipeline: 16x16, 9 frames, 16 text tokens (512 for Wan2.1 I2V), latent output."""
    from diffusers import WanImageToVideoPipeline, WanVideoToVideoPipeline

    tokens = text_tokens(pipe)
    prompt_embeds, negative_prompt_embeds = encode_prompts(pipe, "a red cube on a table", "blurry", tokens)
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        height=HEIGHT,
        width=WIDTH,
        num_frames=NUM_FRAMES,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator("cpu").manual_seed(seed),
        max_sequence_length=tokens,
        output_type="latent",
    )
    if isinstance(pipe, WanImageToVideoPipeline):
        from PIL import Image

        kwargs["image"] = Image.new("RGB", (WIDTH, HEIGHT), (120, 60, 200))
    if isinstance(pipe, WanVideoToVideoPipeline):
        from PIL import Image

        del kwargs["num_frames"]  # the input video sets it
        kwargs["video"] = [Image.new("RGB", (WIDTH, HEIGHT), (120, 60, 200 - 10 * i)) for i in range(NUM_FRAMES)]
    kwargs.update(extra)
    return kwargs


def encode_prompts(pipe, prompt: str, negative_prompt: str, max_length: int = TEXT_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 embeddings as diffusers' Wan pipelines make them (padding tokens zeroed), without its text cleaning.

    diffusers 0.42.1's I2V pipeline calls `ftfy` unconditionally when given a prompt string; passing
    embeddings keeps the tiny pipelines free of that optional dependency.
    """
    embeds = []
    for text in (prompt, negative_prompt):
        tokens = pipe.tokenizer(
            [text], padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
            return_attention_mask=True, return_tensors="pt",
        )
        mask = tokens.attention_mask
        with torch.no_grad():
            hidden = pipe.text_encoder(tokens.input_ids, mask).last_hidden_state
        embeds.append(hidden * mask.unsqueeze(-1).to(hidden.dtype))
    return embeds[0], embeds[1]


def run_tiny(pipe, **kwargs: Any) -> torch.Tensor:
    """Run a tiny pipeline and return its output frames (latents unless output_type says otherwise)."""
    with torch.no_grad():
        return pipe(**tiny_inputs(pipe, **kwargs)).frames


def save_tiny_pipeline(pipe, folder: str | Path) -> Path:
    """Save with `save_pretrained`; load it back with `load_tiny_pipeline` (or diffusers' `from_pretrained`)."""
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder


def load_tiny_pipeline(folder: str | Path):
    """Load a saved tiny pipeline offline (`DiffusionPipeline.from_pretrained` on a local folder)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe
