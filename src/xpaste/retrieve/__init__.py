"""Stage 1, web images: rank local image collections with CLIP, or fetch them from a clip-retrieval service.

Light on purpose: numpy, Pillow and the standard library only. The CLIP scorer that `rank_folder` needs is
passed in by the caller (`xpaste.score.clip.ClipScorer`, the `clip` extra), so importing this package
never loads torch and never touches the network.
"""
from __future__ import annotations

from xpaste.retrieve.filters import is_simple_background, most_common_colour, simple_background_fraction
from xpaste.retrieve.folder import (Candidate, ImageListing, RetrievalResult, labelled_folder, list_images, load_rgb,
                                   rank_folder, scan_images)
from xpaste.retrieve.knn import Download, KnnClient, download

__all__ = ["simple_background_fraction", "is_simple_background", "most_common_colour", "labelled_folder",
           "list_images", "scan_images", "ImageListing", "load_rgb", "rank_folder", "Candidate", "RetrievalResult",
           "KnnClient", "Download", "download"]
