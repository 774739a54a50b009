"""Wan (2.1 and 2.2: WanTransformer3DModel in WanPipeline, WanImageToVideoPipeline, WanVideoToVideoPipeline).

What the Wan family files cannot say as data:
- each denoising step runs the transformer once for the prompt, then once more for the negative prompt when
  CFG is on (guidance_scale > 1): the base class's default branch mapping;
- WanAttnProcessor calls diffusers' `dispatch_attention_fn`: qcompile's backend is installed on the processor;
- no attention call carries a mask (the text padding is zeroed in the embeddings instead);
- the tiny offline pipelines (random weights, in-memory tokenizer; nothing downloaded), built from any family
  file whose pipeline class is a Wan pipeline: the layer counts and heads come from the family data;
- prompt encoding (UMT5 embeddings with padding zeroed) and the image or video conditioning of the quality tools;
- WanVideoToVideoPipeline runs the text-to-video transformer in the same loop (a WanPipeline plan fits it).
The frame rule (4k+1 frames, 16-pixel multiples) is data: the family files' `frames` and `pixels`.
"""

from __future__ import annotations

import string
from typing import Any

import torch

from runtime.models import register
from runtime.models.base import ModelSupport, ModelSupportError

T2V, I2V, V2V = "WanPipeline", "WanImageToVideoPipeline", "WanVideoToVideoPipeline"

# Small sizes of every tiny Wan pipeline; only the transformers' layers and head layout come from the family data.
TEXT_DIM = 32
TEXT_TOKENS = 16
FFN_DIM = 32
LATENT_CHANNELS = 16
# The real models' UMT5 sequence length. Wan2.1 I2V's attention processor also splits cross-attention context at a
# hard-coded 512 text tokens (diffusers WanAttnProcessor: "512 is the context length of the text encoder"), so its
# tiny pipeline runs 512 text tokens too.
REAL_TEXT_TOKENS = 512
# The tiny CLIP vision tower: 32x32 input, 16x16 patches -> 4 patch tokens + 1 class token = 5 image tokens.
IMAGE_DIM = 32
IMAGE_SIZE = 32
IMAGE_PATCH = 16
CONDITIONING_COLOUR = (120, 60, 200)  # a fixed flat colour: the conditioning is part of the sample


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


def is_ti2v_style(family: Any) -> bool:
    """TI2V-5B feeds one timestep per token (`expand_timesteps`); no family field says so, the name does."""
    return "ti2v" in family.name


def _one_block_list(family: Any) -> None:
    for component in family.components:
        if len(component.block_lists) != 1:
            raise ModelSupportError(
                f"family {family.name}: a Wan transformer has one block list, component {component.name} declares "
                f"{len(component.block_lists)} ({', '.join(component.block_list_names)})")


@register
class WanSupport(ModelSupport):
    name = "wan"
    model_classes = ("WanTransformer3DModel",)
    pipeline_classes = (T2V, I2V)
    # diffusers' video-to-video loop over the text-to-video transformer (strength < 1 starts mid-schedule)
    same_transformer_pipelines = {T2V: (V2V,)}

    def processor_classes(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        return (WanAttnProcessor,)

    def pipeline_types(self) -> tuple[type, ...]:
        from diffusers import WanImageToVideoPipeline, WanPipeline, WanVideoToVideoPipeline

        return (WanPipeline, WanImageToVideoPipeline, WanVideoToVideoPipeline)

    def build_tiny(self, family: Any, *, seed: int = 0) -> Any:
        from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline

        if family.pipeline_class not in (T2V, I2V):
            raise ModelSupportError(f"no tiny builder for pipeline class {family.pipeline_class} (family {family.name})")
        _one_block_list(family)
        image_to_video = family.pipeline_class == I2V
        # Wan2.1 I2V (one expert) conditions on CLIP image tokens too; Wan2.2 I2V has no image encoder.
        clip_image = image_to_video and family.boundary_ratio is None
        torch.manual_seed(seed)
        tokenizer = _tokenizer()
        text_encoder = _text_encoder(len(tokenizer))
        vae = _vae()
        # I2V conditions on 4 mask channels + 16 image-latent channels next to the 16 noise channels.
        in_channels = LATENT_CHANNELS + (LATENT_CHANNELS + 4 if image_to_video else 0)
        models = {
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

    def text_tokens(self, pipe: Any, *, tiny: bool) -> int:
        """16 for a tiny pipeline; 512 for a real one, and for a tiny one whose CLIP image encoder makes
        WanAttnProcessor split the context at 512."""
        return TEXT_TOKENS if tiny and getattr(pipe, "image_encoder", None) is None else REAL_TEXT_TOKENS

    def encode_prompts(self, pipe: Any, prompt: str, negative_prompt: str, max_length: int) -> tuple[Any, Any]:
        """UMT5 embeddings as diffusers' Wan pipelines make them (padding tokens zeroed), without its text cleaning:
        diffusers 0.42.1's I2V pipeline calls `ftfy` unconditionally when given a prompt string."""
        out = []
        for text in (prompt, negative_prompt):
            tokens = pipe.tokenizer(
                [text], padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
                return_attention_mask=True, return_tensors="pt",
            )
            device = pipe.text_encoder.device
            mask = tokens.attention_mask.to(device)
            with torch.no_grad():
                hidden = pipe.text_encoder(tokens.input_ids.to(device), mask).last_hidden_state
            out.append(hidden * mask.unsqueeze(-1).to(hidden.dtype))
        return out[0], out[1]

    def conditioning(self, pipe: Any, *, height: int, width: int, num_frames: int | None) -> dict[str, Any]:
        from diffusers import WanImageToVideoPipeline, WanVideoToVideoPipeline
        from PIL import Image

        if isinstance(pipe, WanImageToVideoPipeline):
            return {"image": Image.new("RGB", (width, height), CONDITIONING_COLOUR)}
        if isinstance(pipe, WanVideoToVideoPipeline):
            red, green, blue = CONDITIONING_COLOUR
            # the input video sets the frame count
            return {"num_frames": None,
                    "video": [Image.new("RGB", (width, height), (red, green, blue - 10 * i)) for i in range(num_frames)]}
        return {}


def build_tiny_video_to_video_pipeline(family_name: str = "wan2.1-t2v-1.3b", *, seed: int = 0):
    """diffusers' WanVideoToVideoPipeline over the tiny text-to-video pipeline's components (it takes a video
    and `strength`; strength < 1 runs only the last steps of the schedule)."""
    from diffusers import WanVideoToVideoPipeline

    from runtime.tiny import build_tiny_pipeline

    base = build_tiny_pipeline(family_name, seed=seed)
    if base.transformer_2 is not None or base.config.expand_timesteps:
        raise ModelSupportError(f"no tiny video-to-video builder for {family_name}: WanVideoToVideoPipeline runs one "
                                "transformer with one timestep per frame")
    pipe = WanVideoToVideoPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder,
                                   transformer=base.transformer, vae=base.vae, scheduler=base.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe
