"""rembg sessions (U2-Net, ISNet, BiRefNet, ... or any local U2-Net-style .onnx) as a segmenter.

rembg is imported inside the class, not at module top: its first import in a fresh environment takes
about a minute (numba compiles pymatting), which nobody should pay for merely listing segmenters.

Model files: rembg looks for `<REMBG_HOME>/models/<name>/<name>.onnx` (REMBG_HOME defaults to
~/.rembg; a set U2NET_HOME wins over it) and downloads it when absent. Custom files must live under
that home (rembg refuses other paths), so a local file elsewhere is linked into it. Offline (HF_HUB_OFFLINE=1,
or the download host does not answer within seconds), a missing file is refused at once in one line
(`xpaste.hub.check_download`) instead of after the connection's own timeout.

Which names work: every session rembg lists (`rembg.sessions.sessions`) that runs a local model file, so
`rembg:<name>` reaches each of them (`local_sessions()`): u2net, u2netp, u2net_human_seg, u2net_cloth_seg,
silueta, isnet-general-use, isnet-anime, birefnet-general, birefnet-general-lite, birefnet-general-fp16 (needs
onnxconverter-common), birefnet-portrait/-dis/-hrsod/-cod/-massive, bria-rmbg and sam (rembg's SAM ViT-B,
prompted by its default single centre point), in rembg 2.0.86. Refused with a one-line reason: the sessions
that send the image to a web API (withoutbg, atlascloud: xpaste runs local models only) and the *_custom
sessions, which need a file (`rembg:/path/to/model.onnx`, `custom_session=` picks the class).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import threading
from contextlib import contextmanager
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from xpaste.errors import XPasteError, missing_extra
from xpaste.hub import LOCAL_HINTS, check_download, first_line
from xpaste.ops.masks import normalize_soft
from xpaste.segment.base import check_batch


_download_lock = threading.Lock()


@contextmanager
def _refuse_offline_downloads(model: str, hint: str):
    """While rembg opens a session: a download it starts (pooch.retrieve, only called when the file is absent
    from its home and the legacy ~/.u2net) is refused at once when offline or the host does not answer."""
    try:
        import pooch  # rembg's downloader
    except ModuleNotFoundError:
        yield
        return
    with _download_lock:
        real = pooch.retrieve

        def guarded(url, *args, **kwargs):
            fname = kwargs.get("fname") or os.path.basename(urlsplit(url).path)
            target = os.path.join(str(kwargs.get("path") or os.getcwd()), fname)
            check_download(url, target, what="rembg model", model=model, hint=hint)
            return real(url, *args, **kwargs)

        pooch.retrieve = guarded
        try:
            yield
        finally:
            pooch.retrieve = real


def _is_file_spec(model: str) -> bool:
    return model.lower().endswith(".onnx") or os.sep in model or os.path.isfile(model)


#: rembg sessions that upload the image to a web service instead of running a local model (rembg 2.0.86).
REMOTE_SESSIONS = frozenset({"withoutbg", "atlascloud"})


def _is_remote(name: str, session_cls) -> bool:
    """A session that calls a web API: the known ones, or any whose constructor asks for an API key."""
    if name in REMOTE_SESSIONS:
        return True
    import inspect

    try:
        return "api_key" in inspect.getsource(session_cls.__init__)
    except (OSError, TypeError):
        return False


def local_sessions() -> list[str]:
    """The rembg session names `rembg:<name>` accepts: every listed session that runs a local model file
    (not a web API, not a *_custom session, which needs a file path)."""
    from rembg.sessions import sessions

    return sorted(n for n, c in sessions.items() if not n.endswith("_custom") and not _is_remote(n, c))


class RembgSegmenter:
    """The rembg alpha matte (the `only_mask=True`, no post-processing output) as a 0-255 soft mask,
    min-max normalised per image (`normalize_soft`, method.md Stage 2).

    model: a rembg model name ("u2net", "isnet-general-use", "birefnet-general", ...: any of
        `local_sessions()`) or a path to a local .onnx file with U2-Net's interface (1x3x320x320 in, first
        output's channel 0 = saliency).
    custom_session: the rembg session class used for a local file ("u2net_custom", "dis_custom", ...).
    providers: onnxruntime execution providers; None lets rembg choose (CUDA when usable).
    """

    def __init__(self, model: str = "u2net", custom_session: str = "u2net_custom",
                 providers: list[str] | None = None, name: str | None = None):
        try:
            from rembg import new_session
            from rembg.sessions import sessions
        except ModuleNotFoundError as e:
            raise missing_extra("rembg", "segment") from e
        self.model_id = model
        kwargs = {"providers": list(providers)} if providers else {}
        if _is_file_spec(model):
            if custom_session not in sessions:
                raise XPasteError(f"unknown rembg session {custom_session!r} for a custom model file",
                                  hint="use u2net_custom, dis_custom or ben_custom")
            stem = os.path.splitext(os.path.basename(model))[0]
            self.name = name or f"rembg:{stem}"
            linked = self._link_into_home(model, sessions[custom_session])
            self.session = self._open(new_session, custom_session, model, model_path=linked, **kwargs)
        else:
            if model not in sessions:
                raise XPasteError(f"unknown rembg model {model!r}",
                                  hint=f"choose one of {', '.join(local_sessions())} or pass a path to an .onnx file")
            if _is_remote(model, sessions[model]):
                raise XPasteError(f"rembg session {model!r} sends each image to a web API; xpaste segments with "
                                  "local models only",
                                  hint=f"choose one of {', '.join(local_sessions())} or pass a path to an .onnx file")
            if model.endswith("_custom"):
                raise XPasteError(f"rembg session {model!r} needs a model file",
                                  hint="pass the file: --segmenter rembg:/path/to/model.onnx (Python: "
                                       f"RembgSegmenter('/path/to/model.onnx', custom_session={model!r}))")
            self.name = name or f"rembg:{model}"
            self.session = self._open(new_session, model, model, **kwargs)

    @staticmethod
    def _open(new_session, session_name: str, model: str, **kwargs):
        from rembg.sessions import sessions

        cls = sessions[session_name]
        target = kwargs.get("model_path") or os.path.join(cls.model_dir(), f"{session_name}.onnx")
        hint = (f"put the model file at {target} (the folder comes from REMBG_HOME, or U2NET_HOME when set), "
                f"or {LOCAL_HINTS['rembg']}")
        try:
            with _refuse_offline_downloads(model, "put the file there (its folder comes from REMBG_HOME, or "
                                                  f"U2NET_HOME when set), or {LOCAL_HINTS['rembg']}"):
                return new_session(session_name, **kwargs)
        except OSError as e:
            # A download that fails anyway raises requests' ConnectionError (an OSError); onnxruntime also
            # raises subclasses of it for unreadable files.
            raise XPasteError(f"could not load rembg model {model!r}: {first_line(e)}", hint=hint) from None
        except ImportError as e:  # birefnet-general-fp16 converts its model with onnx + onnxconverter-common
            raise XPasteError(f"could not load rembg model {model!r}: {first_line(e)}",
                              hint="install the missing package, or use the float32 session "
                                   "(e.g. rembg:birefnet-general)") from None
        except Exception as e:  # onnxruntime raises its own types for corrupt/invalid model files
            if type(e).__module__.startswith("onnxruntime"):
                raise XPasteError(f"could not load rembg model {model!r}: {first_line(e)}", hint=hint) from None
            raise

    @staticmethod
    def _link_into_home(path: str, session_cls) -> str:
        """Return a path to `path` inside rembg's home (symlink, or a copy where links are not allowed)."""
        src = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(src):
            raise XPasteError(f"rembg model file {path!r} not found",
                              hint="pass an existing .onnx file, e.g. --segmenter rembg:/path/to/model.onnx")
        homes = [os.path.abspath(session_cls.rembg_home()), os.path.abspath(session_cls.legacy_home())]
        if any(src.startswith(h + os.sep) for h in homes):
            return src
        # rembg validates the *unresolved* path, so a link under its home is accepted. The name carries
        # a hash of the source path so two files with the same name never overwrite each other.
        digest = hashlib.sha1(src.encode()).hexdigest()[:10]
        stem = os.path.splitext(os.path.basename(src))[0]
        dst_dir = session_cls.model_dir()
        dst = os.path.join(dst_dir, f"{stem}-{digest}.onnx")
        os.makedirs(dst_dir, exist_ok=True)
        if os.path.islink(dst) and os.path.realpath(dst) == os.path.realpath(src):
            return dst
        tmp = f"{dst}.tmp{os.getpid()}"
        try:
            os.symlink(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)  # atomic: concurrent workers never see a half-written link or copy
        return dst

    def segment(self, images: list[np.ndarray], prompts: list[str] | None = None) -> list[np.ndarray]:
        # Salient-object models ignore the prompt. rembg has no batched API: one image per call.
        check_batch(images, prompts)
        out = []
        for img in images:
            # session.predict is what rembg.remove(only_mask=True, post_process_mask=False) returns,
            # minus remove()'s vertical stacking of multi-mask outputs; those (e.g. cloth parts) are
            # merged here by a pixel-wise max so the result keeps the image's shape.
            masks = self.session.predict(Image.fromarray(img))
            h, w = img.shape[:2]
            arrays = []
            for m in masks:
                a = np.asarray(m.convert("L") if m.mode != "L" else m, dtype=np.uint8)
                if a.shape != (h, w):
                    a = np.asarray(m.convert("L").resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
                arrays.append(a)
            out.append(normalize_soft(np.maximum.reduce(arrays)) if arrays else np.zeros((h, w), np.uint8))
        return out
