"""Text-to-image generators, reached through a registry so that importing this package stays light.

`build_generator("diffusers", model=...)` imports the backend (torch, diffusers) only then.
"""
from __future__ import annotations


from xpaste.errors import XPasteError
from xpaste.registry import load_backend
from xpaste.generate.prompts import (BACKGROUND_PROMPTS, DEFAULT_TEMPLATES, DEFINITION_TEMPLATES, image_seed,
                                     load_prompt_file, prompt_for, render_prompt)

#: name -> "module:Class"
GENERATORS: dict[str, str] = {"diffusers": "xpaste.generate.diffusers_t2i:DiffusersGenerator"}

# Which pip extra provides the heavy imports of each backend (for the ImportError message).
_EXTRAS = {"diffusers": "generate"}

__all__ = ["GENERATORS", "BACKGROUND_PROMPTS", "DEFAULT_TEMPLATES", "DEFINITION_TEMPLATES", "build_generator",
           "generator_class", "image_seed", "load_prompt_file", "prompt_for", "render_prompt"]


def generator_class(name: str = "diffusers"):
    """The generator class registered under `name` (imports its backend library)."""
    key = name.strip().lower()
    if key not in GENERATORS:
        raise XPasteError(f"unknown generator {name!r}", hint=f"choose one of {', '.join(sorted(GENERATORS))}")
    return load_backend(GENERATORS[key], _EXTRAS[key])


def build_generator(name: str = "diffusers", **kwargs):
    """Construct a generator: `build_generator("diffusers", model="/path/to/folder", steps=30)`."""
    return generator_class(name)(**kwargs)
