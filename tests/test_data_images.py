"""Image files: every mode converted deliberately, every failure a reasoned ImageError."""
import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from victor.data.images import ImageError, load_image, to_rgb

MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "RGBX", "RGBa", "La",
         "I;16", "I;16B", "I;16L", "I;16N"]
FORMATS = ["PNG", "TIFF", "JPEG", "WEBP", "BMP", "GIF"]


def noise_image(mode, size, data: bytes) -> Image.Image:
    need = len(Image.new(mode, size).tobytes())
    return Image.frombytes(mode, size, (data * (need // max(len(data), 1) + 1))[:need] if data else bytes(need))


def encoded(img: Image.Image, fmt: str) -> bytes | None:
    buf = io.BytesIO()
    try:
        img.save(buf, fmt)
    except (OSError, ValueError, KeyError):
        return None
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size and holds no pixels: only a header is read before the size check."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def reason_of(path, **kwargs):
    with pytest.raises(ImageError) as info:
        load_image(path, **kwargs)
    return info.value.reason, str(info.value)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_becomes_rgb_in_every_format_that_stores_it(mode, tmp_path):
    img = noise_image(mode, (7, 5), bytes(range(7, 250, 3)))
    assert to_rgb(img).mode == "RGB" and to_rgb(img).size == (7, 5)
    for fmt in FORMATS:
        data = encoded(img, fmt)
        if data is not None:
            path = tmp_path / f"x.{fmt.lower()}"
            path.write_bytes(data)
            loaded = load_image(path)
            assert loaded.mode == "RGB" and loaded.size == (7, 5), (mode, fmt)


def test_transparency_is_composited_on_white_or_the_given_colour(tmp_path):
    clear, half = (255, 0, 0, 0), (255, 0, 0, 128)
    assert to_rgb(Image.new("RGBA", (2, 2), clear)).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("RGBA", (2, 2), half)).getpixel((0, 0)) == (255, 127, 127)
    assert to_rgb(Image.new("RGBA", (2, 2), clear), background=(0, 0, 0)).getpixel((0, 0)) == (0, 0, 0)
    assert to_rgb(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (2, 2), 3)
    palette.putpalette([255, 0, 0] * 256)
    palette.info["transparency"] = 3
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)
    palette.save(tmp_path / "p.png", transparency=3)  # a tRNS chunk
    assert load_image(tmp_path / "p.png").getpixel((1, 1)) == (255, 255, 255)
    assert to_rgb(Image.new("RGBA", (2, 2), (10, 20, 30, 255))).getpixel((0, 0)) == (10, 20, 30)


def test_high_bit_depth_grey_is_scaled_by_its_range(tmp_path):
    sixteen = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    sixteen.save(tmp_path / "16.png")
    loaded = load_image(tmp_path / "16.png")
    assert [loaded.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    small = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))  # mode I, an 8-bit range
    assert [to_rgb(small).getpixel((x, 0))[0] for x in range(3)] == [0, 100, 255]
    signed = Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32))  # mode F outside 0..255
    assert [to_rgb(signed).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # red in ink
    cmyk.save(tmp_path / "c.jpg")
    r, g, b = load_image(tmp_path / "c.jpg").getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 4, 4))  # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "r.png", exif=exif)
    shown = load_image(tmp_path / "r.png")
    assert shown.size == (20, 40)
    assert shown.getpixel((18, 1)) == (255, 0, 0) and shown.getpixel((1, 1)) == (0, 0, 255)


def test_broken_files_each_have_their_reason(tmp_path):
    good = encoded(noise_image("RGB", (16, 16), bytes(range(256))), "PNG")
    (tmp_path / "real_png.jpg").write_bytes(good)  # wrong extension: the content decides
    assert load_image(tmp_path / "real_png.jpg").size == (16, 16)
    (tmp_path / "half.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "big.png").write_bytes(png_header(8000, 6000))
    (tmp_path / "bomb.png").write_bytes(png_header(100_000, 100_000))
    jpeg = encoded(noise_image("RGB", (64, 64), bytes(range(7, 256, 3))), "JPEG")
    (tmp_path / "half.jpg").write_bytes(jpeg[: len(jpeg) * 3 // 4])
    assert reason_of(tmp_path / "half.png") == ("truncated_image", f"{tmp_path / 'half.png'}: image file is truncated")
    assert reason_of(tmp_path / "half.jpg")[0] == "truncated_image"
    assert reason_of(tmp_path / "text.png") == ("corrupt_image", f"{tmp_path / 'text.png'}: not an image format PIL "
                                                                  "can read")
    assert reason_of(tmp_path / "empty.png")[0] == "corrupt_image"
    assert reason_of(tmp_path / "dir.png") == ("missing_image", f"{tmp_path / 'dir.png'}: not a file")
    assert reason_of(tmp_path / "nope.png") == ("missing_image", f"{tmp_path / 'nope.png'}: no such file")
    assert reason_of(tmp_path / "big.png") == (
        "image_too_large", f"{tmp_path / 'big.png'}: 8000x6000 = 48000000 pixels, more than the limit of 40000000")
    reason, message = reason_of(tmp_path / "bomb.png")
    assert reason == "image_too_large" and "10000000000 pixels" in message  # PIL refuses it at open
    assert reason_of(tmp_path / "real_png.jpg", max_pixels=100)[0] == "image_too_large"


def test_pil_decompression_bomb_error_and_warning_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (40, 40)).save(tmp_path / "warn.png")  # 1600 pixels: PIL warns
    Image.new("RGB", (50, 50)).save(tmp_path / "error.png")  # 2500 > 2 x 1000: PIL raises
    for name in ("warn.png", "error.png"):
        reason, message = reason_of(tmp_path / name, max_pixels=None)
        assert reason == "image_too_large" and "decompression bomb" in message.lower(), message


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00",
                               b"RIFF\x00\x00\x00\x00WEBP"]), body=st.binary(max_size=300))
def test_random_bytes_load_or_raise_an_image_error(prefix, body, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "random.img"
    path.write_bytes(prefix + body)
    try:
        img = load_image(path)
    except ImageError as err:
        assert err.reason in ("corrupt_image", "truncated_image", "image_too_large"), err
    else:
        assert img.mode == "RGB"


@settings(max_examples=200, deadline=None)
@given(mode=st.sampled_from(MODES), width=st.integers(1, 9), height=st.integers(1, 9), data=st.binary(max_size=64),
       fmt=st.sampled_from(FORMATS), cut=st.none() | st.floats(0.0, 1.0))
def test_random_small_images_in_every_mode_load_as_rgb(mode, width, height, data, fmt, cut, tmp_path_factory):
    raw = encoded(noise_image(mode, (width, height), data), fmt)
    assume(raw is not None)
    path = tmp_path_factory.getbasetemp() / "random_mode.img"
    path.write_bytes(raw if cut is None else raw[: int(len(raw) * cut)])
    try:
        img = load_image(path)
    except ImageError as err:
        assert cut is not None and err.reason in ("corrupt_image", "truncated_image"), err
        return
    assert img.mode == "RGB"
    if cut is None:
        assert img.size == (width, height)
