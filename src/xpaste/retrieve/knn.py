"""Query a clip-retrieval k-NN service by text and download the images it returns (stdlib HTTP only).

Protocol (rom1504/clip-retrieval, clip_retrieval/clip_back.py `KnnService.post` and
clip_retrieval/clip_client.py `ClipClient.__search_knn_api__`): POST a JSON body to `<host>/knn-service`;
the server requires "modality", "num_images" and "indice_name" and reads the rest with defaults. The reply
is a JSON list, one dict per neighbour, holding the index's metadata columns (by default "url", "caption",
sometimes "NSFW" or a base64 "image") plus "id" and "similarity" (the raw inner product, a cosine for
normalised CLIP embeddings). An empty "aesthetic_score"/"aesthetic_weight" string turns the aesthetic
re-weighting off.

Downloads are defensive because web URLs and k-NN replies are hostile input: only http(s) (redirects
included), a hard size cap read in chunks, every read bounded by the socket timeout and by a total monotonic
deadline per attempt (a slow-drip server is cut off, `_DeadlineSocket`), bounded retries with exponential
backoff for transient failures only, malformed results recorded and skipped, and a decode check before
anything is written (atomically, named by sha1 of the URL, so a rerun skips files already fetched).
"""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from xpaste.errors import XPasteError
from xpaste.imageio import DECODE_FAILED, decode_first_frame, image_header
from xpaste.io import encode_image, write_bytes_atomic

USER_AGENT = "xpaste/0.1 (+https://github.com/; image retrieval for copy-paste augmentation)"
_ALLOWED_SCHEMES = ("http", "https")
#: Decoded format -> file extension; these bytes are stored as fetched. Other formats are re-encoded as PNG.
_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}
_STORED_SUFFIXES = frozenset(_EXTENSIONS.values())
_CHUNK = 1 << 16


class _Transient(Exception):
    """A failure worth retrying (network trouble, 5xx, 429)."""


class _Rejected(ValueError):
    """A well-formed image we do not want (too small)."""


class _SafeRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would follow a redirect to ftp://; a fetched URL must stay on http(s) end to end.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in _ALLOWED_SCHEMES:
            raise urllib.error.HTTPError(newurl, code, f"redirect to a non-http(s) url refused: {newurl}",
                                         headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _DeadlineSocket:
    """A connected socket whose every receive waits at most min(timeout, time left before `end`).

    A plain socket timeout bounds one read only: a server sending a byte a second never trips it, and
    `HTTPResponse.read(n)` loops over reads until n bytes came. Arming each receive with the time left makes
    the status line, the headers and the body all end by the deadline (monotonic clock).
    """

    def __init__(self, sock, timeout: float, end: float):
        self._sock, self._timeout, self._end = sock, timeout, end

    def _arm(self) -> None:
        left = self._end - time.monotonic()
        if left <= 0:
            raise _DeadlinePassed("deadline passed")
        self._sock.settimeout(min(self._timeout, left))

    def recv_into(self, buffer, *args) -> int:  # arguments as given: an SSLSocket reads 0 bytes for nbytes=0
        self._arm()
        return self._sock.recv_into(buffer, *args)

    def recv(self, *args) -> bytes:
        self._arm()
        return self._sock.recv(*args)

    def makefile(self, mode: str = "r", buffering=None, **kwargs):
        if "w" in mode:
            return self._sock.makefile(mode, buffering, **kwargs)
        self._sock._io_refs += 1  # as socket.makefile does: a close() waits until this reader is closed
        return io.BufferedReader(socket.SocketIO(self, "rb"), io.DEFAULT_BUFFER_SIZE)

    def _decref_socketios(self) -> None:
        self._sock._decref_socketios()

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class _DeadlinePassed(socket.timeout):
    """The attempt's total deadline passed (a subclass of the socket timeout, so http.client treats it alike)."""


class _DeadlineConnections:
    """Mixin for urllib's HTTP(S) handlers: every connection they open reads under `_DeadlineSocket`."""

    def __init__(self, timeout: float, end: float, **kwargs):
        super().__init__(**kwargs)
        self._read_timeout, self._end = timeout, end

    def do_open(self, http_class, req, **kwargs):
        timeout, end = self._read_timeout, self._end

        class Connection(http_class):
            def connect(self):
                super().connect()  # TCP connect (and TLS handshake) under the per-operation socket timeout
                self.sock = _DeadlineSocket(self.sock, timeout, end)

        return super().do_open(Connection, req, **kwargs)


class _HTTPHandler(_DeadlineConnections, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_DeadlineConnections, urllib.request.HTTPSHandler):
    pass


def _opener(timeout: float, end: float) -> urllib.request.OpenerDirector:
    """An opener with only HTTP(S) handlers (no file://, ftp:// or data:), each read bounded by `timeout`
    seconds and by the monotonic deadline `end`."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), _HTTPHandler(timeout, end), _HTTPSHandler(timeout, end),
                    urllib.request.HTTPDefaultErrorHandler(), _SafeRedirect(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _fetch(request: urllib.request.Request, timeout: float, max_bytes: int, deadline_s: float) -> bytes:
    """One attempt: the body, at most max_bytes, all of it (headers included) within deadline_s seconds.

    Raises _Transient (worth a retry: network trouble, no byte for `timeout` seconds, 5xx, 408, 429) or
    ValueError (give up: too large, slower than the deadline, other HTTP errors).
    """
    end = time.monotonic() + deadline_s
    try:
        with _opener(timeout, end).open(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise ValueError(f"larger than max_bytes={max_bytes} (Content-Length {length})")
            parts, size = [], 0
            while True:
                chunk = resp.read1(_CHUNK)  # what has arrived, up to _CHUNK: one receive at a time
                if not chunk:
                    return b"".join(parts)
                size += len(chunk)
                if size > max_bytes:  # servers may omit or lie about Content-Length
                    raise ValueError(f"larger than max_bytes={max_bytes}")
                parts.append(chunk)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code >= 500 or e.code in (408, 429):
            raise _Transient(f"HTTP {e.code}") from None
        raise ValueError(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # resets, timeouts, TLS
        reason = getattr(e, "reason", e)
        if isinstance(reason, _DeadlinePassed) or time.monotonic() >= end:
            raise ValueError(f"slower than the {deadline_s:g} s deadline") from None  # a retry would be too
        raise _Transient(f"{type(e).__name__}: {reason}") from None


def _with_retries(fn, retries: int, backoff: float):
    """Call fn(); on _Transient retry up to `retries` more times, sleeping backoff * 2**attempt between.

    Returns (value, attempts). The last _Transient propagates when every attempt failed.
    """
    for attempt in range(retries + 1):
        try:
            return fn(), attempt + 1
        except _Transient:
            if attempt == retries:
                raise
            time.sleep(backoff * (2 ** attempt))


def _service_url(url: str) -> str:
    """Accept the host ("http://h:1234") or the full endpoint ("http://h:1234/knn-service")."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in _ALLOWED_SCHEMES or not parts.netloc:
        raise XPasteError(f"k-NN service url must be http(s)://host[:port][/knn-service], got {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/knn-service"):
        path += "/knn-service"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class KnnClient:
    """Text -> nearest images of a clip-retrieval index (e.g. a self-hosted `clip-retrieval back`).

    timeout: seconds any one read of the reply may wait for data; the whole reply must arrive within
        30 x timeout (monotonic deadline per attempt, so a slow-drip service cannot hang a run).
    retries: extra attempts after the first for transient failures (network, 5xx, 429); 4xx fails at once.
    """

    def __init__(self, url: str, indice_name: str, timeout: float = 10, retries: int = 3, backoff: float = 0.5,
                 deduplicate: bool = True, use_safety_model: bool = False, use_violence_detector: bool = False,
                 modality: str = "image", use_mclip: bool = False):
        self.url = _service_url(url)
        self.indice_name = indice_name
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.options = {"modality": modality, "use_mclip": use_mclip, "deduplicate": deduplicate,
                        "use_safety_model": use_safety_model, "use_violence_detector": use_violence_detector,
                        "aesthetic_score": "", "aesthetic_weight": ""}

    def payload(self, text: str, num_images: int) -> dict:
        """The JSON body sent for a text query (see the module docstring for the field meanings)."""
        return {"text": text, "image": None, "image_url": None, "indice_name": self.indice_name,
                "num_images": int(num_images), "num_result_ids": int(num_images), **self.options}

    def query(self, text: str, num_images: int) -> list:
        """Neighbours of `text`, best first, as the service sent them: dicts with "similarity" and "id", usually
        "url"/"caption". Entries are not checked here: `download` records a malformed one (not an object, no
        url, a similarity that is not a number) as an error and goes on. Raises XPasteError when the query
        fails after its retries or the reply is not a JSON list."""
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        body = json.dumps(self.payload(text, num_images)).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT})
        try:
            # Replies for thousands of results carry base64 thumbnails at worst; 256 MiB bounds memory.
            raw, _ = _with_retries(lambda: _fetch(request, self.timeout, 256 << 20, 30 * self.timeout),
                                   self.retries, self.backoff)
        except (_Transient, ValueError) as e:
            raise XPasteError(f"k-NN query {text!r} failed: {e}", self.url,
                              "check the service url and indice_name (GET /indices-list lists them)") from None
        try:
            results = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise XPasteError(f"k-NN service answered with invalid json: {e}", self.url) from None
        if not isinstance(results, list):
            raise XPasteError(f"k-NN service answered {type(results).__name__}, expected a list of results",
                              self.url)
        return results


@dataclass
class Download:
    """What happened to one result URL."""

    url: str
    path: str | None  # the stored file, None when status is not "ok"
    status: str  # "ok" or "error: <reason>"
    bytes: int = 0
    similarity: float | None = None
    caption: str = ""
    width: int = 0
    height: int = 0
    attempts: int = 0  # HTTP attempts made (0: refused before fetching, or already on disk)


def _decode(data: bytes, min_side: int, max_pixels: int) -> tuple[bytes, str, int, int]:
    """Check that `data` is a whole image of at least min_side; returns (bytes to store, extension, w, h): the
    bytes as they came for the formats in _EXTENSIONS, else the first frame as PNG (so list_images picks it up).
    w, h are the stored size (readers apply an EXIF orientation when they read the file)."""
    try:
        fmt, w, h = image_header(data, verify=True)  # verify: structure and checksums
        if min(w, h) < min_side:
            raise _Rejected(f"too small ({w}x{h} < min_side {min_side})")
        if w * h > max_pixels:  # a few KB of PNG can decode to gigabytes: check before decoding
            raise _Rejected(f"too many pixels ({w}x{h} > max_pixels {max_pixels})")
        frame = decode_first_frame(data, max_pixels, convert=fmt not in _EXTENSIONS)  # catches truncated pixel data
    except XPasteError as e:
        raise ValueError(f"not a decodable image ({e.message.removeprefix(DECODE_FAILED + ': ')})") from None
    if frame is None:
        return data, _EXTENSIONS[fmt], w, h
    return encode_image(frame, ".png", png_compression=6), ".png", w, h  # GIF/TIFF/...: zlib level 6, as PIL's


def _fields(result: object) -> tuple[str, float | None, str]:
    """(url, similarity, caption) of one k-NN result (a dict, or a bare URL string); ValueError if malformed."""
    import math

    if isinstance(result, str):
        return result, None, ""
    if not isinstance(result, dict):
        raise ValueError(f"malformed result: a {type(result).__name__}, not an object")
    url, sim, caption = result.get("url"), result.get("similarity"), result.get("caption")
    if not isinstance(url, str) or not url:
        raise ValueError("result has no url" if url in (None, "") else
                         f"malformed result: url is a {type(url).__name__}")
    if sim is not None and (isinstance(sim, bool) or not isinstance(sim, (int, float)) or not math.isfinite(sim)):
        raise ValueError(f"malformed result: similarity {sim!r} is not a finite number")
    return url, None if sim is None else float(sim), "" if caption is None else str(caption)


def _download_one(result: object, out_dir: Path, max_bytes: int, timeout: float, retries: int, backoff: float,
                  min_side: int, deadline_s: float, max_pixels: int) -> Download:
    try:
        url, sim, caption = _fields(result)
    except ValueError as e:
        url = result.get("url") if isinstance(result, dict) else None
        return Download(url=url if isinstance(url, str) else "", path=None, status=f"error: {e}")
    record = Download(url=url, path=None, status="", similarity=sim, caption=caption)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _ALLOWED_SCHEMES:
        record.status = f"error: unsupported url scheme {scheme or '(none)'!r}; only http(s) is fetched"
        return record
    stem = hashlib.sha1(url.encode("utf-8")).hexdigest()
    existing = sorted(p for p in out_dir.glob(stem + ".*") if p.suffix in _STORED_SUFFIXES)
    if existing:  # fetched by an earlier run (files are only ever written whole, after the decode check)
        try:
            _, record.width, record.height = image_header(existing[0])
            record.path, record.status, record.bytes = str(existing[0]), "ok", existing[0].stat().st_size
            return record
        except Exception:  # noqa: BLE001 -- damaged since: fetch it again
            pass
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
    attempts = [0]

    def attempt():
        attempts[0] += 1
        return _fetch(request, timeout, max_bytes, deadline_s)

    try:
        data, _ = _with_retries(attempt, retries, backoff)
        record.bytes = len(data)
        payload, ext, record.width, record.height = _decode(data, min_side, max_pixels)
        path = out_dir / (stem + ext)
        write_bytes_atomic(path, payload, durable=False)
        record.path, record.status = str(path), "ok"
    except (_Transient, ValueError) as e:
        record.status = f"error: {e}"
    except Exception as e:  # noqa: BLE001 -- one bad URL must never stop a long download run
        record.status = f"error: {type(e).__name__}: {e}"
    record.attempts = attempts[0]
    return record


def download(results: list, out_dir: str | os.PathLike, max_bytes: int = 20 * 2**20, timeout: float = 10,
             retries: int = 3, min_side: int = 64, backoff: float = 0.5, workers: int = 8,
             deadline_s: float = 60.0, max_pixels: int = 50_000_000) -> list[Download]:
    """Fetch each result's "url" (or each bare URL string) into out_dir; one Download per result, in input
    order; never raises per result.

    timeout: seconds any one read may wait for data (a socket timeout, re-armed per receive); deadline_s: total
    seconds per attempt, connection, headers and body together, on the monotonic clock (a server dripping
    bytes slower than that is cut off at the deadline and not retried); max_bytes: larger bodies are refused
    (Content-Length, and the running count of bytes read); max_pixels: larger images are refused before
    decoding (decompression bombs). Transient failures (network, a read timeout, 5xx, 408, 429) are retried
    `retries` more times with backoff * 2**attempt seconds between attempts; other failures are recorded at
    once. Malformed results (not an object or a string, no url, a similarity that is not a finite number) and
    bytes that do not decode as an image are recorded with status "error: <reason>" and never fetched /
    stored. Files already in out_dir (same sha1 name) are reused, not fetched.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    args = (out, int(max_bytes), float(timeout), int(retries), float(backoff), int(min_side), float(deadline_s),
            int(max_pixels))
    if workers <= 1 or len(results) <= 1:
        return [_download_one(r, *args) for r in results]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # I/O bound: threads overlap the network waits
        return list(pool.map(lambda r: _download_one(r, *args), results))
