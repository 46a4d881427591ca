"""Tiny random models built offline from configs (the diffusers test-suite pattern), saved into folders.

Shared by the generator unit tests and the end-to-end pipeline tests: `build_tiny_sd(folder)` writes a
Stable Diffusion pipeline that `AutoPipelineForText2Image.from_pretrained(folder)` loads with no network.
"""
from __future__ import annotations

import os


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's byte -> printable unicode table: a vocab over these covers every possible input."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_clip_tokenizer():
    """An in-memory CLIPTokenizer over single bytes (no merges): any text tokenizes, nothing is downloaded."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_tiny_sd(folder: str | os.PathLike) -> str:
    """Save a random tiny StableDiffusionPipeline (64x64 images, about 0.1 M parameters) into `folder`.

    The VAE has two blocks, so it downsamples by 2: 64x64 images use 32x32 latents (the UNet's sample_size).
    Seeded, so two builds give identical weights.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = str(folder)
    tokenizer = tiny_clip_tokenizer()
    vocab = tokenizer.get_vocab()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=2)
    vae = AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, layer_norm_eps=1e-5, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder
