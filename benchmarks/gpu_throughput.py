"""GPU throughput of the model stages with real architectures and random weights (no download).

Stable Diffusion 1.5's UNet/VAE/text-encoder configs at 512x512 in fp16 with the DPM-Solver multistep
scheduler (the paper's generator) at 50 and 25 steps, and open_clip ViT-L-14 scoring of 224x224 cut-outs.
Random weights cost exactly what trained ones cost. Prints images/s per configuration.

    python benchmarks/gpu_throughput.py                 # on a CUDA machine
    python benchmarks/gpu_throughput.py --device cpu --quick   # a smoke run of the script itself
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=768, attention_head_dim=8)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                 max_position_embeddings=77, projection_dim=768)


def sd15_pipeline(device: str, dtype, quick: bool):
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tiny_models import tiny_clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet_cfg, vae_cfg, text_cfg = dict(SD15_UNET), dict(SD15_VAE), dict(SD15_TEXT)
    if quick:  # shrink everything for a CPU smoke run of this script
        unet_cfg.update(block_out_channels=(32, 32, 64, 64), cross_attention_dim=32, attention_head_dim=4,
                        layers_per_block=1, sample_size=8)
        vae_cfg.update(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=64)
        text_cfg.update(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                        projection_dim=32)
    tokenizer = tiny_clip_tokenizer()
    text_cfg.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**unet_cfg), vae=AutoencoderKL(**vae_cfg),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)), tokenizer=tokenizer,
        scheduler=DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                              steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def bench_generation(device: str, quick: bool) -> list[tuple]:
    import torch

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = sd15_pipeline(device, dtype, quick)
    size = 64 if quick else 512
    rows = []
    for steps in ((2,) if quick else (50, 25)):
        for batch in ((1, 2) if quick else (1, 4, 8)):
            prompts = ["a photo of a single cup"] * batch
            gens = [torch.Generator("cpu").manual_seed(i) for i in range(batch)]
            pipe(prompts, num_inference_steps=steps, height=size, width=size, generator=gens)  # warm-up
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < (2 if quick else 20):
                pipe(prompts, num_inference_steps=steps, height=size, width=size, generator=gens)
                n += batch
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            rows.append((f"SD1.5 {size}px {steps} steps", batch, n / (time.perf_counter() - start)))
    return rows


def bench_clip(device: str, quick: bool) -> list[tuple]:
    import open_clip
    import torch

    name = "ViT-B-32" if quick else "ViT-L-14"
    model = open_clip.create_model(name, pretrained=None, device=device,
                                   precision="fp16" if device.startswith("cuda") else "fp32").eval()
    dtype = next(model.parameters()).dtype
    rows = []
    for batch in ((4,) if quick else (32, 128)):
        x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
        with torch.inference_mode():
            model.encode_image(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < (2 if quick else 10):
                model.encode_image(x)
                n += batch
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        rows.append((f"CLIP {name} image embedding", batch, n / (time.perf_counter() - start)))
    return rows


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="shrunken models: checks the script, not the GPU")
    args = parser.parse_args()
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"device: {where}, torch {torch.__version__}{' (quick: shrunken models)' if args.quick else ''}")
    print(f"{'workload':<36} {'batch':>5} {'images/s':>9}")
    for workload, batch, rate in bench_generation(args.device, args.quick) + bench_clip(args.device, args.quick):
        print(f"{workload:<36} {batch:>5} {rate:9.2f}")


if __name__ == "__main__":
    main()
