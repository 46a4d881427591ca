"""xpaste.imageio: every image read as displayed (EXIF orientation applied), one-line errors naming the file.

Right values come from PIL's `ImageOps.exif_transpose` and OpenCV's `cv2.imread` (which applies the EXIF
orientation by default), never from xpaste.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from xpaste import imageio
from xpaste.errors import XPasteError
from xpaste.imageio import exif_orientation, image_size, read_gray, read_rgb, read_rgba

H, W = 24, 40  # not square, so every transposing orientation changes the shape


def _blocky(seed: int) -> np.ndarray:
    """8x8 blocks of one colour each: JPEG at quality 100 keeps them (almost) exactly."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)


def _save(path, arr, orientation: int | None, **kw):
    im = Image.fromarray(arr)
    if orientation is None:
        im.save(path, **kw)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(path, exif=exif, **kw)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_applied_as_pil_and_opencv_show_it(tmp_path, orientation):
    import cv2

    p = _save(tmp_path / f"o{orientation}.jpg", _blocky(orientation), orientation, quality=100)
    with Image.open(p) as im:
        shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    ours = read_rgb(p)
    assert ours.dtype == np.uint8 and ours.flags.writeable
    np.testing.assert_array_equal(ours, shown)  # PIL's transposition, exactly
    cv = cv2.imread(str(p), cv2.IMREAD_COLOR)[..., ::-1]
    assert cv.shape == ours.shape  # OpenCV's orientation handling agrees on the shape ...
    assert np.abs(cv.astype(int) - ours.astype(int)).mean() < 2  # ... and on the pixels (decoders differ by 1)
    assert image_size(p) == (shown.shape[1], shown.shape[0])
    assert exif_orientation(p) == orientation
    assert (ours.shape[:2] == (W, H)) == (orientation >= 5)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_rgba_and_gray_readers_are_upright_too(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    p = _save(tmp_path / "a.png", rgba, orientation)
    with Image.open(p) as im:
        shown = ImageOps.exif_transpose(im)
        np.testing.assert_array_equal(read_rgba(p), np.asarray(shown.convert("RGBA")))
        np.testing.assert_array_equal(read_gray(p), np.asarray(shown.convert("L")))
        np.testing.assert_array_equal(read_rgb(p), np.asarray(shown.convert("RGB")))


def test_transparency_over_a_background(tmp_path):
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, : W // 2, 3] = 255  # left half opaque red, right half fully transparent
    p = _save(tmp_path / "t.png", rgba, None)
    white = read_rgb(p, background=(255, 255, 255))
    assert (white[:, : W // 2] == [200, 0, 0]).all() and (white[:, W // 2:] == 255).all()
    assert (read_rgb(p)[:, W // 2:] == [200, 0, 0]).all()  # default: alpha dropped, colour kept


def test_sixteen_bit_scaled_like_pil_rounding(tmp_path):
    values = np.array([[0, 257, 300, 65535], [128, 129, 40000, 30000]], np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(values).save(p)
    expected = np.round(values / 257).astype(np.uint8)
    np.testing.assert_array_equal(read_rgb(p)[..., 1], expected)
    np.testing.assert_array_equal(read_gray(p), expected)


def _bad_file(tmp_path, kind):
    p = tmp_path / f"{kind}.png"
    good = tmp_path / "good.png"
    Image.fromarray(_blocky(1)).save(good)
    data = good.read_bytes()
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "truncated":
        p.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    elif kind == "text":
        p.write_text("not an image at all")
    return p


@pytest.mark.parametrize("kind, words", [("missing", "not found"), ("empty", "empty (0 bytes)"),
                                         ("truncated", "cannot decode image"), ("garbage", "cannot decode image"),
                                         ("text", "cannot decode image")])
@pytest.mark.parametrize("reader", [read_rgb, read_rgba, read_gray])
def test_unreadable_files_one_line_naming_the_file(tmp_path, kind, words, reader):
    p = _bad_file(tmp_path, kind)
    with pytest.raises(XPasteError, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        reader(p)
    assert info.value.path == str(p) and "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["missing", "empty", "text"])
def test_header_readers_refuse_unreadable_files(tmp_path, kind):
    p = _bad_file(tmp_path, kind)
    for fn in (image_size, exif_orientation):
        with pytest.raises(XPasteError) as info:
            fn(p)
        assert info.value.path == str(p)


def test_pixel_limit_checked_before_decoding(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(p)  # 120000 pixels
    with pytest.raises(XPasteError, match="120000 pixels, over the limit of 100000") as info:
        read_rgb(p, max_pixels=100_000)
    assert info.value.path == str(p) and "MAX_PIXELS" in info.value.hint
    monkeypatch.setattr(imageio, "MAX_PIXELS", 119_999)
    with pytest.raises(XPasteError, match="over the limit"):
        read_rgba(p)
    assert read_rgb(p, max_pixels=120_000).shape == (300, 400, 3)


def test_damaged_exif_falls_back_to_stored_pixels(tmp_path):
    """An orientation value outside 1..8 is ignored, as viewers ignore it."""
    arr = _blocky(5)
    p = _save(tmp_path / "odd.jpg", arr, 9, quality=100)
    with Image.open(p) as im:
        stored = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(read_rgb(p), stored)
    assert image_size(p) == (W, H) and exif_orientation(p) == 1


def test_import_xpaste_stays_light():
    import subprocess
    import sys

    code = "import sys, xpaste, xpaste.imageio; assert 'PIL' not in sys.modules, 'PIL imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ readers of files xpaste writes or checks
def test_mask_reader_decodes_as_opencv_grayscale(tmp_path):
    import cv2

    rng = np.random.default_rng(1)
    gray = tmp_path / "gray.png"
    Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).save(gray)
    colour = tmp_path / "colour.png"
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(colour)
    tagged = _save(tmp_path / "tagged.png", rng.integers(0, 256, (H, W), dtype=np.uint8), 6)
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), rng.integers(0, 65536, (H, W)).astype(np.uint16))
    for p in (gray, colour, tagged, deep):
        got = imageio.read_mask(p)
        assert got.dtype == np.uint8 and np.array_equal(got, cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)), p.name
    assert np.array_equal(imageio.read_mask(gray), np.asarray(Image.open(gray)))  # 8-bit: the stored values
    assert imageio.read_mask(tagged).shape == (W, H)  # the orientation tag applied, as OpenCV shows it


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "text"])
def test_mask_reader_errors_name_the_file(tmp_path, kind):
    p = _bad_file(tmp_path, kind)
    with pytest.raises(XPasteError) as info:
        imageio.read_mask(p)
    assert info.value.path == str(p) and "\n" not in str(info.value)


def test_mask_reader_refuses_a_bomb_from_its_header(tmp_path):
    p = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 400), np.uint8)).save(p)
    with pytest.raises(XPasteError, match="120000 pixels, over the limit of 100000"):
        imageio.read_mask(p, max_pixels=100_000)
    assert imageio.read_mask(p, max_pixels=120_000).shape == (300, 400)


def test_png_size_from_the_header_only(tmp_path):
    import io

    Image.fromarray(np.zeros((H, W, 4), np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    assert imageio.png_size(data) == (H, W) == imageio.png_size(np.frombuffer(data, np.uint8))
    assert imageio.png_size(data[:23]) is None and imageio.png_size(b"") is None
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(jpeg, "JPEG")
    assert imageio.png_size(jpeg.getvalue()) is None


def test_rgba_bytes_keep_the_channel_order_and_the_stored_pixels(tmp_path):
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    p = _save(tmp_path / "cut.png", rgba, 6)  # a tag a cut-out never has: the stored pixels all the same
    got = imageio.decode_rgba_bytes(np.fromfile(p, np.uint8))
    assert got.dtype == np.uint8 and np.array_equal(got, np.asarray(Image.open(p)))
    Image.fromarray(rgba[..., :3]).save(tmp_path / "rgb.png")
    assert imageio.decode_rgba_bytes(np.fromfile(tmp_path / "rgb.png", np.uint8)) is None
    assert imageio.decode_rgba_bytes(np.frombuffer(b"\x89PNG\r\n\x1a\n" + bytes(100), np.uint8)) is None


def test_encoded_bytes_header_and_first_frame_as_stored(tmp_path):
    import io

    arr = _blocky(3)
    p = _save(tmp_path / "tagged.jpg", arr, 6, quality=100)
    data = p.read_bytes()
    assert imageio.image_header(data, verify=True) == ("JPEG", W, H) == imageio.image_header(p)
    assert image_size(p) == (H, W)  # displayed: swapped
    with Image.open(p) as im:
        assert np.array_equal(imageio.decode_first_frame(data), np.asarray(im.convert("RGB")))
    assert imageio.decode_first_frame(data, convert=False) is None
    pal = Image.fromarray(arr).convert("P")
    out = io.BytesIO()
    pal.save(out, "GIF", transparency=0)
    with Image.open(io.BytesIO(out.getvalue())) as im:
        expected = np.asarray(im.convert("RGBA"))
    got = imageio.decode_first_frame(out.getvalue())
    assert got.shape == (H, W, 4) and np.array_equal(got, expected)
    with pytest.raises(XPasteError, match="over the limit of 100"):
        imageio.decode_first_frame(data, max_pixels=100)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "bad crc"])
def test_damaged_bytes_are_one_decode_error(tmp_path, damage):
    import io

    out = io.BytesIO()
    Image.fromarray(_blocky(4)).save(out, "PNG")
    data = out.getvalue()
    if damage == "truncated":
        data = data[:-60]
    elif damage == "garbage":
        data = b"not an image" * 9
    else:
        data = data[:40] + bytes([data[40] ^ 1]) + data[41:]  # inside the IHDR chunk: its checksum fails
    with pytest.raises(XPasteError) as info:
        imageio.image_header(data, verify=True)
        imageio.decode_first_frame(data)
    assert info.value.message.startswith(imageio.DECODE_FAILED) and info.value.path is None
