"""Text-to-image with Hugging Face diffusers: any pipeline `AutoPipelineForText2Image` can load.

SD 1.x/2.x, SDXL and the turbo distillations all work from a hub id or from a local folder written by
`save_pretrained`. Each image gets its own seeded generator, so image i is a function of (prompt_i, seed_i)
alone: the batch size, the other prompts of the batch and the worker that runs it do not change it.
X-Paste's reference settings (SD 1.5, DPM-Solver multistep, 50 steps, guidance 7.5, 512x512, fp16) are what
you get with `scheduler="dpm"` and the defaults.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import diffusers
import numpy as np
import torch
import transformers.utils.logging as transformers_logging
from diffusers import (AutoPipelineForText2Image, DDIMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, LMSDiscreteScheduler,
                       PNDMScheduler)

from diffusers.utils import logging as diffusers_logging

from xpaste.errors import XPasteError
from xpaste.hub import LOCAL_HINTS, check_model_source, first_line, looks_like_path

SCHEDULERS = {
    "dpm": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "pndm": PNDMScheduler,
    "lms": LMSDiscreteScheduler,
}

_DTYPES = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}

_LOAD_HINT = (f"{LOCAL_HINTS['generate']} (Python: DiffusersGenerator('/path/to/folder')); or download it once "
              "while online (it is then read from the Hugging Face cache)")


def check_model(model: str) -> bool:
    """In seconds, before loading: True when hub id `model` must be read from the local cache (the hub is
    unreachable, the files are cached), False when it can load normally (a folder, or the hub answers).
    Raises XPasteError in one line when it cannot load (xpaste.hub): no retries for minutes."""
    return check_model_source(model, what="text-to-image model", files=["model_index.json"],
                              hint=f"{LOCAL_HINTS['generate']} (Python: DiffusersGenerator('/path/to/folder'))")


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading pipeline components" / "Loading weights" bars (progress is the caller's), restored after."""
    was = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # diffusers passes a deprecated argument to huggingface_hub when it probes the cache: not the user's.
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
            yield
    finally:
        if was[0]:
            diffusers_logging.enable_progress_bar()
        if was[1]:
            transformers_logging.enable_progress_bar()


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        # fp16 halves memory and roughly doubles speed on GPUs; many CPU kernels lack fp16, so fp32 there.
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise XPasteError(f"unknown dtype {dtype!r}", hint="use fp16, bf16 or fp32")
    return _DTYPES[key]


class DiffusersGenerator:
    """Generate RGB images from prompts with a diffusers text-to-image pipeline.

    model: a hub id ("stable-diffusion-v1-5/stable-diffusion-v1-5") or a local pipeline folder.
    device: "cuda", "cuda:1", "cpu", ...; None picks CUDA when available.
    dtype: "fp16"/"bf16"/"fp32" or a torch.dtype; None means fp16 on CUDA and fp32 elsewhere.
    scheduler: one of SCHEDULERS ("dpm" is X-Paste's choice); None keeps the pipeline's own.
    steps, guidance, height, width, negative_prompt: passed to the pipeline for every image.
    batch_size: images per pipeline call (memory vs speed; never changes the images).
    disable_safety_checker: skip loading the SD 1.x safety checker, which blanks flagged images and would
        silently empty categories (the reference code never runs it either: it asks the pipeline for latents
        and decodes them itself).
    """

    name = "diffusers"

    def __init__(self, model: str, device: str | None = None, dtype: str | torch.dtype | None = None,
                 scheduler: str | None = None, steps: int = 50, guidance: float = 7.5, height: int = 512,
                 width: int = 512, negative_prompt: str | None = None, batch_size: int = 4,
                 disable_safety_checker: bool = True):
        if int(steps) < 1 or int(batch_size) < 1:
            raise XPasteError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
        if int(height) % 8 or int(width) % 8 or int(height) < 8 or int(width) < 8:
            # The VAE downsamples by 8: other sizes fail deep inside the UNet with a shape error.
            raise XPasteError(f"height and width must be positive multiples of 8, got {height}x{width}")
        self.model_id = str(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = _resolve_dtype(dtype, self.device)
        self.steps, self.guidance = int(steps), float(guidance)
        self.height, self.width = int(height), int(width)
        self.negative_prompt = negative_prompt or None
        self.batch_size = int(batch_size)
        self.pipe = self._load(self.model_id, disable_safety_checker)
        if scheduler is not None:
            key = scheduler.strip().lower()
            if key not in SCHEDULERS:
                raise XPasteError(f"unknown scheduler {scheduler!r}",
                                  hint=f"choose one of {', '.join(SCHEDULERS)}")
            self.pipe.scheduler = SCHEDULERS[key].from_config(self.pipe.scheduler.config)
        self.scheduler_name = type(self.pipe.scheduler).__name__
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)  # progress is the caller's business

    def _load(self, model: str, disable_safety_checker: bool):
        cache_only = check_model(model)  # in seconds: a missing folder, or a hub id that cannot load, fails here
        local = looks_like_path(model)
        path = os.path.expanduser(model) if local else model
        try:
            with _quiet_loading():
                # Reading model_index.json first tells us whether the pipeline has a safety checker at all
                # (SDXL and turbo do not; passing safety_checker=None to them only produces a warning).
                config = AutoPipelineForText2Image.load_config(path, local_files_only=cache_only)
                kwargs: dict[str, Any] = {"dtype": self.dtype}  # diffusers 0.42 deprecates `torch_dtype`
                if cache_only:
                    kwargs["local_files_only"] = True
                if disable_safety_checker and "safety_checker" in config:
                    kwargs.update(safety_checker=None, requires_safety_checker=False)
                pipe = AutoPipelineForText2Image.from_pretrained(path, **kwargs)
        except (OSError, ValueError, KeyError) as e:
            # Offline hub ids fail with OSError, malformed ids with huggingface_hub's ValueError, pipelines
            # that are not text-to-image with AutoPipeline's ValueError, folders without _class_name KeyError.
            what = "model folder" if local else "model"
            why = first_line(e) + (" (offline: read from the local cache only)" if cache_only else "")
            raise XPasteError(f"could not load text-to-image {what} {model!r}: {why}",
                              hint=_LOAD_HINT) from None
        return pipe

    @property
    def provenance(self) -> dict[str, Any]:
        """What determines the images besides (prompt, seed): recorded next to every generated image."""
        return {
            "generator": self.name,
            "model": self.model_id,
            "pipeline": type(self.pipe).__name__,
            "scheduler": self.scheduler_name,
            "steps": self.steps,
            "guidance": self.guidance,
            "height": self.height,
            "width": self.width,
            "negative_prompt": self.negative_prompt,
            "dtype": str(self.dtype).removeprefix("torch."),
            "noise": "cpu-generator-per-image",
            "diffusers": diffusers.__version__,
        }

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[np.ndarray]:
        """One (height, width, 3) uint8 RGB image per (prompt, seed), in order."""
        prompts, seeds = list(prompts), list(seeds)
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        for s in seeds:
            if isinstance(s, bool) or not hasattr(s, "__index__") or not 0 <= int(s) < 2**63:
                raise ValueError(f"seeds must be integers in [0, 2**63), got {s!r}")
        images: list[np.ndarray] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start:start + self.batch_size]
            images.extend(self._run(batch, seeds[start:start + self.batch_size]))
        return images

    @torch.inference_mode()
    def _run(self, prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        # CPU generators (not CUDA ones): diffusers draws the noise on the CPU and moves it, so a seed gives
        # the same starting latents on any GPU or on the CPU. One generator per image keeps image i's noise
        # (initial latents and, for ancestral schedulers, every step's noise) independent of its batch.
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        negative = [self.negative_prompt] * len(prompts) if self.negative_prompt else None
        out = self.pipe(prompt=prompts, negative_prompt=negative, num_inference_steps=self.steps,
                        guidance_scale=self.guidance, height=self.height, width=self.width,
                        generator=generators, output_type="np")
        arr = np.asarray(out.images, dtype=np.float32)  # (B, H, W, 3) in [0, 1]
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        return [np.ascontiguousarray(a) for a in arr]

    def __repr__(self) -> str:
        return (f"DiffusersGenerator(model={self.model_id!r}, scheduler={self.scheduler_name}, steps={self.steps}, "
                f"guidance={self.guidance}, size={self.width}x{self.height}, dtype={self.provenance['dtype']}, "
                f"device={self.device})")
