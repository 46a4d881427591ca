"""Tiny random models built offline from configs (the diffusers test-suite pattern), saved into folders.

Shared by the unit tests, the end-to-end pipeline tests and the benchmarks: `build_tiny_sd(folder)` writes a
Stable Diffusion pipeline that `AutoPipelineForText2Image.from_pretrained(folder)` loads with no network;
`make_tiny_clipseg`, `export_tiny_u2net` (an ONNX model with U2-Net's interface, for rembg) and
`make_tiny_open_clip` (an open_clip `local-dir:` folder) do the same for the segmenters and the scorer.
"""
from __future__ import annotations

import json
import os
import warnings


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


def make_tiny_clipseg(folder: str) -> str:
    """Save a random tiny CLIPSeg model + processor (byte-level vocab, 64-px images) into folder."""
    import torch
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    tokenizer = tiny_clip_tokenizer()
    vocab = tokenizer.get_vocab()
    processor = CLIPSegProcessor(image_processor=ViTImageProcessor(size={"height": 64, "width": 64}),
                                 tokenizer=tokenizer)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    config = CLIPSegConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos,
                         pad_token_id=eos),
        vision_config=dict(image_size=64, patch_size=8, hidden_size=32, intermediate_size=37,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=32, reduce_dim=16, extract_layers=[0, 1])
    torch.manual_seed(0)
    CLIPSegForImageSegmentation(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def export_tiny_u2net(path: str) -> str:
    """Export a random conv net with U2-Net's interface (1x3x320x320 -> 1x1x320x320 in (0, 1))."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

        def forward(self, x):
            return torch.sigmoid(self.conv(x))

    torch.manual_seed(0)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with warnings.catch_warnings():
        # The legacy exporter warns it is deprecated; the dynamo exporter needs onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(Tiny().eval(), (torch.zeros(1, 3, 320, 320),), path, dynamo=False,
                          input_names=["input"], output_names=["output"])
    return path


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    # the default SimpleTokenizer emits ids up to 49407, so the vocab keeps CLIP's size
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def make_tiny_open_clip(folder) -> str:
    """Register a tiny open_clip config, build it with random weights and save it as a local-dir: folder."""
    import open_clip
    import safetensors.torch
    import torch

    config_path = folder / "xpaste-tiny-clip.json"  # open_clip registers a config under the file stem
    config_path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config_path)
    torch.manual_seed(0)
    model = open_clip.create_model("xpaste-tiny-clip", pretrained=None)
    out = folder / "model"
    out.mkdir()
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    safetensors.torch.save_file(model.state_dict(), str(out / "open_clip_model.safetensors"))
    return str(out)


# --- SAM family (transformers SamModel / Sam2Model / Sam3Model), tiny random configs ------------------------
# Shapes follow transformers' own model tests; images are processed at 64 px (SAM, SAM 2) or 56 px (SAM 3), so
# one forward of one small image takes well under a second on one CPU thread.

def make_tiny_sam(folder: str) -> str:
    """Save a random tiny SamModel + SamProcessor (64-px input, 16 px patches -> 4x4 embeddings) into folder."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    size = 64
    config = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=4,
                           image_size=size, patch_size=16, window_size=2, global_attn_indexes=[1],
                           num_pos_feats=16, mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=32, image_size=size, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                 iou_head_hidden_dim=32))
    torch.manual_seed(0)
    SamModel(config).eval().save_pretrained(folder)
    processor = SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": size}, pad_size={"height": size, "width": size},
        mask_size={"longest_edge": size // 4}, mask_pad_size={"height": size // 4, "width": size // 4}))
    processor.save_pretrained(folder)
    return folder


def make_tiny_sam2(folder: str) -> str:
    """Save a random tiny Sam2Model + Sam2Processor (64-px input, Hiera with 4 stages of one block) into folder."""
    import torch
    from transformers import (Sam2Config, Sam2HieraDetConfig, Sam2ImageProcessor, Sam2Model, Sam2Processor,
                              Sam2VisionConfig)

    size = 64
    config = Sam2Config(
        vision_config=Sam2VisionConfig(
            backbone_config=Sam2HieraDetConfig(
                hidden_size=8, image_size=[size, size], blocks_per_stage=[1, 1, 2, 1],
                embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 2, 2],
                window_size_per_stage=[4, 4, 2, 2], global_attention_blocks=[3],
                window_positional_embedding_background_size=[2, 2]),
            backbone_channel_list=[64, 32, 16, 8],
            backbone_feature_sizes=[[size // 4, size // 4], [size // 8, size // 8], [size // 16, size // 16]],
            fpn_hidden_size=32),
        prompt_encoder_config=dict(hidden_size=32, image_size=size, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                 iou_head_hidden_dim=32),
        image_size=size)
    torch.manual_seed(0)
    Sam2Model(config).eval().save_pretrained(folder)
    Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": size, "width": size},
                                                     mask_size={"height": size // 4, "width": size // 4})
                  ).save_pretrained(folder)
    return folder


def make_tiny_sam3(folder: str) -> str:
    """Save a random tiny Sam3Model + Sam3Processor (56-px input, 14 px patches, 5 queries; the byte-level CLIP
    tokenizer of `tiny_clip_tokenizer`) into folder."""
    import torch
    from transformers import (Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor, Sam3VisionConfig,
                              Sam3ViTConfig)

    size = 56
    tokenizer = tiny_clip_tokenizer()
    vocab = tokenizer.get_vocab()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    heads, ffn = 4, 64
    config = Sam3Config(
        vision_config=Sam3VisionConfig(
            backbone_config=Sam3ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=heads,
                                          intermediate_size=ffn, image_size=size, patch_size=14, window_size=2,
                                          global_attn_indexes=[1]),
            fpn_hidden_size=32, scale_factors=[2.0, 1.0]),
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=ffn, projection_dim=32,
                         num_hidden_layers=2, num_attention_heads=heads, max_position_embeddings=32,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos),
        geometry_encoder_config=dict(hidden_size=32, num_layers=1, num_attention_heads=heads,
                                     intermediate_size=ffn, mask_fuser_hidden_size=32, mask_fuser_num_layers=1),
        detr_encoder_config=dict(hidden_size=32, num_layers=1, num_attention_heads=heads, intermediate_size=ffn),
        detr_decoder_config=dict(hidden_size=32, num_layers=1, num_queries=5, num_attention_heads=heads,
                                 intermediate_size=ffn),
        mask_decoder_config=dict(hidden_size=32, num_upsampling_stages=2))
    torch.manual_seed(0)
    Sam3Model(config).eval().save_pretrained(folder)
    Sam3Processor(image_processor=Sam3ImageProcessor(size={"height": size, "width": size}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def export_tiny_saliency_onnx(path: str) -> str:
    """Export a random one-conv net as an ONNX saliency model of any input size (N x 3 x H x W -> N x 1 x H x W),
    the interface of rembg's BiRefNet and IS-Net sessions (which feed 1024 x 1024); place it at
    `<REMBG_HOME>/models/<session>/<session>.onnx` and `new_session(<session>)` uses it with no download."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 1, 3, padding=1).eval()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), path, dynamo=False, input_names=["input"],
                          output_names=["output"],
                          dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}, "output": {0: "n", 2: "h", 3: "w"}})
    return path
