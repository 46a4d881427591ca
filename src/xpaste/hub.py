"""Fail fast when a model cannot be downloaded: one home for "is the hub reachable, is the model cached".

Every backend calls this before loading a model by hub id (never for a local folder or file):

- `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`) means offline, with no probe at all;
- otherwise one bounded TCP probe of the download host (`huggingface.co:443`, or `HF_ENDPOINT`'s host, or the
  HTTPS proxy when one is set) decides, within `PROBE_TIMEOUT_S` seconds, cached for the process;
- offline with the files in the local cache, loading still works: the backend loads with
  `local_files_only=True` (or inside `hub_offline()`);
- offline without them, `XPasteError` in one line naming the model, why it cannot be loaded, and the exact flag
  (and config key) that passes a local folder instead. No retries, no waiting for the libraries' own timeouts.

The same rule covers files fetched from other hosts (rembg's ONNX files from GitHub, open_clip URLs):
`check_download(url, ...)` refuses at once when offline is requested or the host does not answer.

Light on purpose: only the standard library at import (huggingface_hub is imported inside functions).
"""
from __future__ import annotations

import os
import socket
import threading
import urllib.parse
import urllib.request
from contextlib import contextmanager
from typing import Iterable, Iterator

from xpaste.errors import XPasteError

#: Seconds one reachability probe (DNS + TCP connect) may take, all addresses together.
PROBE_TIMEOUT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "true", "yes", "on", "y", "t"}

#: How to pass a local model instead of a hub id, per backend: the exact flag and config key.
LOCAL_HINTS = {
    "generate": ("pass a local pipeline folder (written by pipeline.save_pretrained): --model /path/to/folder "
                 "(config: generate.models)"),
    "clipseg": ("pass a local folder holding the CLIPSeg model and its processor: "
                "--segmenter clipseg:/path/to/folder (config: segment.segmenters)"),
    "rembg": "pass a local .onnx file: --segmenter rembg:/path/to/model.onnx (config: segment.segmenters)",
    "clip": ("pass a folder holding open_clip_config.json and open_clip_model.safetensors: "
             "--clip local-dir:/path/to/folder (config: score.clip)"),
}

_probes: dict[tuple[str, int], str | None] = {}  # (host, port) -> None (reachable) or why not
_probe_lock = threading.Lock()


def offline_requested() -> str | None:
    """The variable that asks for offline mode ("HF_HUB_OFFLINE=1"), or None. Read at call time."""
    for var in _OFFLINE_VARS:
        value = os.environ.get(var, "").strip()
        if value.lower() in _TRUE:
            return f"{var}={value}"
    return None


def hub_address() -> tuple[str, int]:
    """(host, port) of the Hugging Face endpoint (`HF_ENDPOINT` when set)."""
    return _address(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)


def _address(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url if "//" in url else f"https://{url}")
    return parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)


def _route(host: str, port: int, scheme: str = "https") -> tuple[str, int]:
    """The address a download of host:port actually connects to: the proxy when one applies."""
    try:
        proxy = urllib.request.getproxies().get(scheme)
        if proxy and not urllib.request.proxy_bypass(host):
            return _address(proxy)
    except Exception:  # noqa: BLE001 - a malformed proxy setting: probe the host itself
        pass
    return host, port


def host_reachable(host: str, port: int = 443, timeout: float | None = None) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` s (DNS included). Cached per process."""
    return probe(host, port, timeout) is None


def probe(host: str, port: int = 443, timeout: float | None = None) -> str | None:
    """None when a TCP connection to host:port opens within `timeout` s (DNS included), else why not.
    Cached per process (per host and port)."""
    key = (host, int(port))
    with _probe_lock:
        if key in _probes:
            return _probes[key]
    limit = PROBE_TIMEOUT_S if timeout is None else float(timeout)
    result: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection(key, timeout=limit):
                result.append(None)
        except socket.gaierror as e:
            result.append(f"name lookup failed: {e.strerror or e}")
        except (TimeoutError, socket.timeout):
            result.append(f"no answer within {limit:g} s")
        except (OSError, ValueError) as e:
            result.append(getattr(e, "strerror", None) or str(e) or type(e).__name__)

    # A thread bounds the whole probe: getaddrinfo has no timeout of its own (a dead DNS server can hang it).
    worker = threading.Thread(target=attempt, name="xpaste-hub-probe", daemon=True)
    worker.start()
    worker.join(limit)
    reason = result[0] if result else f"no answer within {limit:g} s"
    with _probe_lock:
        _probes[key] = reason
    return reason


def reset_probes() -> None:
    """Forget cached probe results (tests; a long-lived process whose network changed)."""
    with _probe_lock:
        _probes.clear()


def unreachable_reason(url: str | None = None) -> str | None:
    """Why downloads from `url` (default: the Hugging Face hub) cannot happen now, or None when they can."""
    offline = offline_requested()
    if offline:
        return f"{offline} is set (offline mode)"
    host, port = _address(url) if url else hub_address()
    scheme = urllib.parse.urlsplit(url).scheme if url and "//" in url else "https"
    target = _route(host, port, scheme)
    why = probe(*target)
    if why is None:
        return None
    via = "" if target == (host, port) else f" through the proxy {target[0]}:{target[1]}"
    return f"{host}:{port} is unreachable{via} ({why})"


def hf_cache_dir(cache_dir: str | os.PathLike | None = None) -> str:
    if cache_dir:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_file(repo_id: str, filenames: Iterable[str], cache_dir: str | os.PathLike | None = None,
                revision: str | None = None) -> str | None:
    """The local path of the first of `filenames` of `repo_id` in the Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        try:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision)
        except Exception:  # noqa: BLE001 - a malformed repo id is simply not cached
            found = None
        if isinstance(found, str):
            return found
    return None


def looks_like_path(model: str) -> bool:
    """A local folder rather than a hub id. Hub ids also contain "/", so only explicit path forms (absolute,
    ./, ../, ~) or an existing folder count as local."""
    return os.path.isabs(model) or model.startswith((".", "~")) or os.path.isdir(model)


def check_model_source(model: str, *, what: str, files: Iterable[str], hint: str) -> bool:
    """Before loading `model`, a hub id or a local folder: False when it loads normally (a folder that exists,
    or the hub answers), True when it must be read from the local cache (`check_hub_model`). XPasteError in
    one line for a folder that does not exist or a hub id neither reachable nor cached."""
    if looks_like_path(model):
        if not os.path.isdir(os.path.expanduser(model)):
            raise XPasteError(f"{what} folder {model!r} not found", hint=hint)
        return False
    return check_hub_model(model, what=what, files=files, hint=hint)


def check_hub_model(model: str, *, what: str, files: Iterable[str], hint: str,
                    cache_dir: str | os.PathLike | None = None, revision: str | None = None,
                    shown: str | None = None) -> bool:
    """Before loading hub repo `model`: False when the hub is reachable (load normally), True when it is not
    but `files` (any one of them) are cached (load with local_files_only=True / inside `hub_offline()`).
    Raises XPasteError, in one line, when it is neither. `shown`: the name the user gave, when not the repo id."""
    reason = unreachable_reason()
    if reason is None:
        return False
    if cached_file(model, files, cache_dir=cache_dir, revision=revision) is not None:
        return True
    name = repr(model) if shown is None else f"{shown} (hub repo {model})"
    raise XPasteError(f"could not load {what} {name}: {reason} and it is not in the local cache "
                      f"{hf_cache_dir(cache_dir)}", hint=f"{hint}; or download it once while online")


def check_download(url: str, target: str | os.PathLike, *, what: str, model: str, hint: str) -> None:
    """Before a library downloads `url` to `target` (a file that is absent): refuse at once when offline."""
    reason = unreachable_reason(url)
    if reason is not None:
        raise XPasteError(f"could not load {what} {model!r}: {reason} and the file is not at {target}", hint=hint)


@contextmanager
def hub_offline(enabled: bool = True) -> Iterator[None]:
    """huggingface_hub's offline mode for the duration (it reads the flag at call time): cache only, no request.
    For libraries that take no `local_files_only` argument (open_clip)."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def first_line(error: BaseException | str, limit: int = 400) -> str:
    """The first line of an error message, whole, or cut at a word boundary with "..." past `limit` chars."""
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else type(error).__name__
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return f"{cut} ..."
