"""Tests for kling_prefect.media and kling_prefect.emulator.video: real files, no mocks."""

from __future__ import annotations

import base64
import io
import math
import os
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from kling_prefect import media
from kling_prefect.emulator import video
from kling_prefect.media.frames import rgb_to_video_frame

FPS = 24


def natural_image(height: int, width: int, seed: int = 1) -> np.ndarray:
    """A photo-like test image: smooth colour fields plus mild grain."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.full((height, width, 3), 128, dtype=np.float32)
    for c in range(3):
        for _ in range(6):
            fx, fy = rng.uniform(0.5, 6, 2)
            phase = rng.uniform(0, 2 * np.pi)
            img[..., c] += np.sin(2 * np.pi * (fx * xs / width + fy * ys / height) + phase) * rng.uniform(8, 25)
    img += rng.normal(0, 4, (height, width, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def channel_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=(0, 1))


def encode_image(rgb: np.ndarray, codec: str, pix_fmt: str) -> bytes:
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = rgb.shape[1], rgb.shape[0], pix_fmt
    ctx.time_base = Fraction(1, 1)
    frame = rgb_to_video_frame(rgb, pix_fmt) if pix_fmt != "rgb24" else av.VideoFrame.from_ndarray(rgb)
    frame.pts = 0
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


def resized(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    flags = av.video.reformatter.Interpolation.AREA | av.video.reformatter.Interpolation.ACCURATE_RND
    return frame.reformat(width=width, height=height, interpolation=flags).to_ndarray()


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A few shared clips (rendered once per module)."""
    d = tmp_path_factory.mktemp("clips")
    out = {}
    for i, (dur, audio) in enumerate([(3, False), (5, False), (2, False)]):
        out[f"plain{i}"] = video.render_clip(d / f"plain{i}.mp4", duration_s=dur, seed_text=f"clip {i}", audio=audio)
    for i, dur in enumerate((2, 3, 2)):
        out[f"audio{i}"] = video.render_clip(d / f"audio{i}.mp4", duration_s=dur, seed_text=f"a{i}", audio=True)
    out["portrait"] = video.render_clip(d / "portrait.mp4", duration_s=2, aspect_ratio="9:16", audio=True)
    out["square30"] = video.render_clip(d / "square30.mp4", duration_s=1, aspect_ratio="1:1", fps=30)
    return out


# ----------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("aspect", ["16:9", "9:16", "1:1"])
@pytest.mark.parametrize("duration", [3, 5, 10])
def test_render_pattern_clip(tmp_path: Path, aspect: str, duration: int) -> None:
    path = video.render_clip(tmp_path / "clip.mp4", duration_s=duration, aspect_ratio=aspect, seed_text="a fox")
    info = media.probe(path)
    assert (info.width, info.height) == video.frame_size(aspect)
    assert info.aspect_ratio == aspect
    assert info.frame_count == duration * FPS
    assert info.duration_seconds == pytest.approx(duration, abs=1 / FPS)
    assert info.fps == FPS
    assert info.video_codec == "h264"
    assert not info.has_audio
    first, last = media.read_frame(path, "first"), media.read_frame(path, "last")
    assert first.shape == (info.height, info.width, 3) and first.dtype == np.uint8
    assert channel_diff(first, last).mean() > 5, "the clip should move"
    assert media.is_decodable_mp4(path)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in container.decode(video=0)) == duration * FPS
    assert leftovers(tmp_path) == []


def test_frame_size_and_validation(tmp_path: Path) -> None:
    assert video.frame_size("16:9") == (320, 180)
    assert video.frame_size("9:16") == (180, 320)
    assert video.frame_size("1:1") == (240, 240)
    with pytest.raises(ValueError):
        video.frame_size("4:3")
    with pytest.raises(ValueError):
        video.render_clip(tmp_path / "x.mp4", duration_s=0)
    with pytest.raises(ValueError):
        video.render_clip(tmp_path / "x.mp4", duration_s=1, padding_bytes=5)
    with pytest.raises(ValueError):
        video.render_clip(tmp_path / "x.mp4", duration_s=1, aspect_ratio="4:3")
    assert list(tmp_path.iterdir()) == []


def test_render_rounds_frame_count_and_honours_fps(tmp_path: Path) -> None:
    path = video.render_clip(tmp_path / "odd.mp4", duration_s=2.3, fps=30, aspect_ratio=None)
    info = media.probe(path)
    assert info.frame_count == round(2.3 * 30) == 69
    assert info.fps == 30
    assert info.duration_seconds == pytest.approx(69 / 30, abs=1e-6)
    assert (info.width, info.height) == (320, 180)


def test_render_is_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = video.render_clip(tmp_path / "a.mp4", duration_s=1, seed_text="a red balloon")
    b = video.render_clip(tmp_path / "b.mp4", duration_s=1, seed_text="a red balloon")
    c = video.render_clip(tmp_path / "c.mp4", duration_s=1, seed_text="a green forest")
    assert a.read_bytes() == b.read_bytes()
    assert channel_diff(media.read_frame(a, "first"), media.read_frame(c, "first")).mean() > 20


def test_render_audio(clips: dict[str, Path]) -> None:
    path = clips["audio1"]
    info = media.probe(path)
    assert info.has_audio
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac"
        assert stream.codec_context.channels == 1
        assert float(stream.duration * stream.time_base) == pytest.approx(info.duration_seconds, abs=0.05)
        pcm = np.concatenate([frame.to_ndarray()[0] for frame in container.decode(audio=0)])
    assert len(pcm) / stream.codec_context.sample_rate == pytest.approx(info.duration_seconds, abs=0.05)
    assert 0.2 < np.abs(pcm).max() < 0.3  # a clean 0.25-amplitude tone, no encoder overshoot
    assert not media.probe(clips["plain0"]).has_audio


def test_first_and_last_image(tmp_path: Path) -> None:
    first = natural_image(180, 320, seed=1)
    last = natural_image(180, 320, seed=2)
    path = video.render_clip(
        tmp_path / "i2v.mp4",
        duration_s=5,
        first_image=media.encode_png(first),
        last_image=media.encode_png(last),
        aspect_ratio="9:16",  # ignored: the image decides the size
    )
    info = media.probe(path)
    assert (info.width, info.height, info.frame_count) == (320, 180, 5 * FPS)
    assert (channel_diff(media.read_frame(path, "first"), first) < 3).all()
    assert (channel_diff(media.read_frame(path, "last"), last) < 3).all()
    middle = media.read_frame(path, info.frame_count // 2)
    assert channel_diff(middle, first).mean() > 3 and channel_diff(middle, last).mean() > 3


def test_first_image_animates_away(tmp_path: Path) -> None:
    first = natural_image(240, 240, seed=3)
    jpeg = encode_image(first, "mjpeg", "yuvj444p")
    path = video.render_clip(tmp_path / "sq.mp4", duration_s=3, first_image=jpeg, seed_text="drift")
    info = media.probe(path)
    assert (info.width, info.height, info.aspect_ratio) == (240, 240, "1:1")
    decoded_source = media.decode_image(jpeg)
    assert (channel_diff(media.read_frame(path, "first"), decoded_source) < 3).all()
    assert channel_diff(media.read_frame(path, "last"), decoded_source).mean() > 5


@pytest.mark.parametrize(
    ("src_size", "expected"),
    [((640, 360), (320, 180)), ((360, 640), (180, 320)), ((333, 250), (320, 240)), ((200, 120), (200, 120))],
)
def test_first_image_sizing(tmp_path: Path, src_size: tuple[int, int], expected: tuple[int, int]) -> None:
    w, h = src_size
    image = natural_image(h, w, seed=w)
    path = video.render_clip(tmp_path / "c.mp4", duration_s=1, first_image=media.encode_png(image))
    info = media.probe(path)
    assert (info.width, info.height) == expected == video.image_frame_size(w, h)
    reference = image if (w, h) == expected else resized(image, *expected)
    assert (channel_diff(media.read_frame(path, "first"), reference) < 3).all()


def test_padding(tmp_path: Path) -> None:
    plain = video.render_clip(tmp_path / "plain.mp4", duration_s=2, seed_text="pad", audio=True)
    padding = 3 * (1 << 20) + 12345
    padded = video.render_clip(
        tmp_path / "padded.mp4", duration_s=2, seed_text="pad", audio=True, padding_bytes=padding
    )
    movie = plain.read_bytes()
    assert padded.stat().st_size == len(movie) + padding
    with padded.open("rb") as fh:
        assert fh.read(len(movie)) == movie
        assert fh.read(8) == video.free_box_header(padding) == padding.to_bytes(4, "big") + b"free"
    info, padded_info = media.probe(plain), media.probe(padded)
    assert padded_info == info
    assert media.is_decodable_mp4(padded)
    assert np.array_equal(media.read_frame(padded, "last"), media.read_frame(plain, "last"))


def test_free_box_helpers() -> None:
    assert video.free_box_header(8) == b"\x00\x00\x00\x08free"
    big = (1 << 32) + 10
    header = video.free_box_header(big)
    assert header[:8] == b"\x00\x00\x00\x01free" and int.from_bytes(header[8:], "big") == big
    with pytest.raises(ValueError):
        video.free_box_header(7)
    chunks = list(video.iter_free_box(2 * (1 << 20) + 100))
    assert sum(len(c) for c in chunks) == 2 * (1 << 20) + 100
    assert max(len(c) for c in chunks) <= 1 << 20


# ---------------------------------------------------------------------------------------------- media


def test_png_round_trip_and_image_decoding() -> None:
    rgb = natural_image(31, 45, seed=7)  # odd sizes on purpose
    png = media.encode_png(rgb)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert np.array_equal(media.decode_image(png), rgb)
    for codec, pix_fmt in (("mjpeg", "yuvj420p"), ("libwebp", "yuv420p")):
        decoded = media.decode_image(encode_image(natural_image(64, 96), codec, pix_fmt))
        assert decoded.shape == (64, 96, 3) and decoded.dtype == np.uint8
        assert (channel_diff(decoded, natural_image(64, 96)) < 8).all()
    with pytest.raises(ValueError):
        media.decode_image(b"definitely not an image")
    with pytest.raises(ValueError):
        media.encode_png(np.zeros((4, 4), dtype=np.uint8))


def test_read_frame_indices(clips: dict[str, Path]) -> None:
    path = clips["plain0"]
    n = media.probe(path).frame_count
    with av.open(str(path)) as container:
        frames = [media.video_frame_to_rgb(f) for f in container.decode(video=0)]
    assert len(frames) == n
    assert np.array_equal(media.read_frame(path, "first"), frames[0])
    assert np.array_equal(media.read_frame(path, 0), frames[0])
    assert np.array_equal(media.read_frame(path, 10), frames[10])
    assert np.array_equal(media.read_frame(path, "last"), frames[-1])
    assert np.array_equal(media.read_frame(path, -1), frames[-1])
    with pytest.raises(IndexError):
        media.read_frame(path, n)


def test_extract_last_frame(clips: dict[str, Path], tmp_path: Path) -> None:
    for name in ("plain1", "audio0"):
        png = media.extract_last_frame(clips[name], tmp_path / f"{name}.png")
        assert png == tmp_path / f"{name}.png"
        assert np.array_equal(media.decode_image(png.read_bytes()), media.read_frame(clips[name], "last"))
    assert leftovers(tmp_path) == []


def test_make_thumbnail(clips: dict[str, Path], tmp_path: Path) -> None:
    thumb = media.decode_image(media.make_thumbnail(clips["plain1"], tmp_path / "t.png").read_bytes())
    assert thumb.shape == (180, 320, 3)
    small = media.decode_image(media.make_thumbnail(clips["plain1"], tmp_path / "s.png", width=160).read_bytes())
    assert small.shape == (90, 160, 3)
    tall = media.decode_image(media.make_thumbnail(clips["portrait"], tmp_path / "p.png", width=90).read_bytes())
    assert tall.shape == (160, 90, 3)
    # The thumbnail comes from the middle of the clip.
    mid = media.read_frame(clips["plain1"], media.probe(clips["plain1"]).frame_count // 2)
    assert channel_diff(thumb, mid).mean() < 3
    assert leftovers(tmp_path) == []


def test_is_decodable_mp4(clips: dict[str, Path], tmp_path: Path) -> None:
    good = clips["audio1"]
    assert media.is_decodable_mp4(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    assert not media.is_decodable_mp4(truncated)
    shaved = tmp_path / "shaved.mp4"
    shaved.write_bytes(data[:-100])
    assert not media.is_decodable_mp4(shaved)
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 64_000, dtype=np.uint8).tobytes())
    assert not media.is_decodable_mp4(noise)
    assert not media.is_decodable_mp4(tmp_path / "missing.mp4")
    png = tmp_path / "image.png"
    png.write_bytes(media.encode_png(natural_image(16, 16)))
    assert not media.is_decodable_mp4(png)


def test_is_decodable_mp4_faststart_truncation(clips: dict[str, Path], tmp_path: Path) -> None:
    """With the index at the front, a cut-off tail is detected from the index, not by luck."""
    faststart = tmp_path / "faststart.mp4"
    with av.open(str(clips["audio1"])) as src, av.open(str(faststart), "w", options={"movflags": "+faststart"}) as out:
        mapping = {s.index: out.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.size:
                packet.stream = mapping[packet.stream.index]
                out.mux(packet)
    assert media.is_decodable_mp4(faststart)
    data = faststart.read_bytes()
    for cut in (len(data) // 2, len(data) - 500):
        cropped = tmp_path / f"cut{cut}.mp4"
        cropped.write_bytes(data[:cut])
        assert not media.is_decodable_mp4(cropped)


def test_aspect_ratio_names() -> None:
    def info(w: int, h: int) -> media.VideoInfo:
        return media.VideoInfo(1.0, w, h, 24.0, 24, "h264", False)

    assert info(1920, 1080).aspect_ratio == "16:9"
    assert info(1280, 718).aspect_ratio == "16:9"
    assert info(1080, 1920).aspect_ratio == "9:16"
    assert info(1000, 990).aspect_ratio == "1:1"
    assert info(640, 480).aspect_ratio == "4:3"
    assert info(1000, 300).aspect_ratio == "10:3"


# -------------------------------------------------------------------------------------------- pictures


def ramp_clip(path: Path, n: int = 48, size: tuple[int, int] = (64, 48)) -> tuple[Path, list[int]]:
    """A 24 fps H.264 clip of ``n`` flat grey frames getting brighter (level 20 + 4 i), and those levels.

    Encoded here with PyAV directly, so the tests do not depend on the emulator or on media's encoders.
    """
    width, height = size
    levels = [20 + 4 * i for i in range(n)]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "0", "preset": "ultrafast", "g": "12"}  # keyframes every 12: seeks matter
        for i, level in enumerate(levels):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), level, np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path, levels


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """The marker segments of a JPEG up to its scan: (marker byte, payload)."""
    assert data[:2] == b"\xff\xd8", "no SOI"
    segments = []
    pos = 2
    while True:
        assert data[pos] == 0xFF, f"no marker at {pos}"
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segments.append((marker, data[pos + 4 : pos + 2 + length]))
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return segments
        pos += 2 + length


def luma_table(data: bytes) -> list[int]:
    """The first quantisation table of a JPEG (zigzag order)."""
    tables = [payload for marker, payload in jpeg_segments(data) if marker == 0xDB]
    assert tables and tables[0][0] == 0, "8-bit table 0 first"
    return list(tables[0][1:65])


def test_encode_jpeg_is_a_baseline_jfif_that_round_trips(tmp_path: Path) -> None:
    rgb = natural_image(108, 192, seed=5)
    data = media.encode_jpeg(rgb)
    segments = jpeg_segments(data)
    markers = [marker for marker, _ in segments]
    assert markers[0] == 0xE0 and segments[0][1].startswith(b"JFIF\x00"), "JFIF APP0 first"
    assert 0xC0 in markers, "baseline DCT (SOF0)"
    assert not {0xC1, 0xC2, 0xC3} & set(markers), "no extended, progressive or lossless frame"
    sof = next(payload for marker, payload in segments if marker == 0xC0)
    precision, height, width, components = (
        sof[0],
        int.from_bytes(sof[1:3], "big"),
        int.from_bytes(sof[3:5], "big"),
        sof[5],
    )
    assert (precision, width, height, components) == (8, 192, 108, 3)
    assert [sof[6 + 3 * c + 1] for c in range(3)] == [0x22, 0x11, 0x11], "4:2:0 sampling"
    assert data.endswith(b"\xff\xd9")
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuvj420p"
    decoded = media.decode_image(data)
    assert decoded.shape == rgb.shape
    assert media.mean_abs_diff(decoded, rgb) < 4
    assert len(data) < 12_000  # a thumbnail-sized JPEG of grainy content: a few KB
    # Odd sizes: a smooth picture (tiny grainy ones lose chroma detail to 4:2:0 whatever the size's parity).
    ys, xs = np.mgrid[0:31, 0:45]
    odd = np.stack([40 + 4 * xs, 60 + 5 * ys, 200 - 2 * xs - ys], axis=2).astype(np.uint8)
    assert media.mean_abs_diff(media.decode_image(media.encode_jpeg(odd, quality=95)), odd) < 2
    assert media.encode_jpeg(rgb) == data, "deterministic"


def test_jpeg_quality_scales_the_quantisation_steps() -> None:
    rgb = natural_image(90, 160, seed=8)
    tables = {q: luma_table(media.encode_jpeg(rgb, q)) for q in (1, 50, 75, 100)}
    # libjpeg's scaling: 75 halves the steps of 50 (FFmpeg rounds down); 1 is the coarsest, 100 the finest.
    assert tables[75][1:] == [v // 2 for v in tables[50][1:]]
    assert all(a >= b >= c >= d for a, b, c, d in zip(tables[1], tables[50], tables[75], tables[100], strict=True))
    assert max(tables[100][1:]) < min(tables[1][1:])
    sizes = [len(media.encode_jpeg(rgb, q)) for q in (10, 50, 75, 95)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] / 2
    errors = [media.mean_abs_diff(media.decode_image(media.encode_jpeg(rgb, q)), rgb) for q in (10, 95)]
    assert errors[0] > errors[1]
    for bad in (0, 101):
        with pytest.raises(ValueError, match="quality"):
            media.encode_jpeg(rgb, bad)
    with pytest.raises(ValueError):
        media.encode_jpeg(np.zeros((4, 4), dtype=np.uint8))


def test_jpeg_data_uri() -> None:
    rgb = natural_image(40, 60, seed=9)
    uri = media.jpeg_data_uri(rgb, quality=80)
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    assert base64.b64decode(uri[len(prefix) :], validate=True) == media.encode_jpeg(rgb, quality=80)


def data_uri_image(uri: str) -> tuple[bytes, np.ndarray]:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    data = base64.b64decode(uri[len(prefix) :], validate=True)
    return data, media.decode_image(data)


def test_thumbnail_data_uri_is_a_small_middle_frame(clips: dict[str, Path]) -> None:
    path = clips["plain1"]  # 5 s of 320 x 180
    data, picture = data_uri_image(media.thumbnail_data_uri(path))
    assert picture.shape == (108, 192, 3)
    assert len(data) < 12_000
    middle = media.read_frame(path, media.probe(path).frame_count // 2)
    assert media.mean_abs_diff(picture, middle) < 5  # middle is scaled down to the thumbnail's size
    assert media.mean_abs_diff(picture, media.read_frame(path, "first")) > 10
    _, tall = data_uri_image(media.thumbnail_data_uri(clips["portrait"], width=160))
    assert tall.shape == (284, 160, 3)
    # Bounded in height too (the summary's table cells): a portrait clip is as high as a landscape one.
    _, boxed_tall = data_uri_image(media.thumbnail_data_uri(clips["portrait"], width=72, height=40))
    _, boxed_wide = data_uri_image(media.thumbnail_data_uri(path, width=72, height=40))
    assert (boxed_tall.shape, boxed_wide.shape) == ((40, 22, 3), (40, 72, 3))
    with pytest.raises(ValueError, match="must be >= 2"):
        media.thumbnail(path, 72, height=1)


def test_frame_at_is_the_frame_on_screen(tmp_path: Path) -> None:
    path, levels = ramp_clip(tmp_path / "ramp.mp4")
    n = len(levels)

    def level(seconds: float) -> float:
        return float(media.frame_at(path, seconds).mean())

    assert level(0) == pytest.approx(levels[0], abs=1)
    for i in (1, 11, 12, 13, 30, n - 1):  # across keyframes (every 12th frame) and up to the last one
        assert level(i / FPS) == pytest.approx(levels[i], abs=1), i
        assert level((i + 0.5) / FPS) == pytest.approx(levels[i], abs=1), i  # still on screen half a frame later
    duration = media.probe(path).duration_seconds
    assert duration == pytest.approx(n / FPS)
    for seconds in (duration, duration + 1, 1e9, math.inf):
        assert level(seconds) == pytest.approx(levels[-1], abs=1)
    assert np.array_equal(media.frame_at(path, math.inf), media.read_frame(path, "last"))
    assert np.array_equal(media.frame_at(path, 0), media.read_frame(path, "first"))
    for bad in (-0.1, math.nan):
        with pytest.raises(ValueError):
            media.frame_at(path, bad)


def panels(strip: np.ndarray, width: int, count: int, gap: int = 2) -> list[np.ndarray]:
    assert strip.shape[1] == count * width + (count - 1) * gap
    for k in range(1, count):
        column = strip[:, k * (width + gap) - gap : k * (width + gap)]
        assert (column == 255).all(), "white separator"
    return [strip[:, k * (width + gap) : k * (width + gap) + width] for k in range(count)]


@pytest.mark.parametrize("count", [4, 5, 6])
def test_filmstrip_spreads_frames_evenly_in_order(tmp_path: Path, count: int) -> None:
    path, levels = ramp_clip(tmp_path / "ramp.mp4")  # 48 frames, 2 s
    strip = media.filmstrip(path, frames=count, height=48)  # the clip's own height: no scaling
    assert strip.shape[0] == 48
    means = [float(p.mean()) for p in panels(strip, 64, count)]
    # Frame k is the one on screen at k / (count - 1) of 2 s; the last is the true last frame.
    expected = [levels[min(len(levels) - 1, k * len(levels) // (count - 1))] for k in range(count)]
    assert means == pytest.approx(expected, abs=1)
    assert means == sorted(means)


def test_filmstrip_size_and_data_uri(clips: dict[str, Path]) -> None:
    path = clips["plain1"]
    strip = media.filmstrip(path)
    assert strip.shape == (90, 5 * 160 + 4 * 2, 3)
    first, last = media.read_frame(path, "first"), media.read_frame(path, "last")
    assert media.mean_abs_diff(strip[:, :160], first) < 4
    assert media.mean_abs_diff(strip[:, -160:], last) < 4
    data, picture = data_uri_image(media.filmstrip_data_uri(path))
    assert picture.shape == strip.shape
    assert media.mean_abs_diff(picture, strip) < 4
    assert len(data) < 20_000
    with pytest.raises(ValueError):
        media.filmstrip(path, frames=1)


def test_seam_strip_shows_last_frame_beside_first_frame(clips: dict[str, Path]) -> None:
    left, right = clips["plain0"], clips["plain1"]
    strip = media.seam_strip(left, right, height=180)  # their own height: exact pixels
    before, after = panels(strip, 320, 2)
    assert np.array_equal(before, media.read_frame(left, "last"))
    assert np.array_equal(after, media.read_frame(right, "first"))
    small = media.seam_strip(left, clips["portrait"])
    assert small.shape == (120, 213 + 2 + 68, 3)  # 16:9 and 9:16 at 120 px high
    assert media.mean_abs_diff(small[:, :213], media.read_frame(left, "last")) < 4


def test_side_by_side_scales_to_one_height() -> None:
    a = np.full((40, 80, 3), 10, np.uint8)
    b = np.full((20, 20, 3), 200, np.uint8)
    row = media.side_by_side([a, b])  # default: the lowest height, nothing is scaled up
    assert row.shape == (20, 40 + 2 + 20, 3)
    assert (row[:, :40] == 10).all() and (row[:, 40:42] == 255).all() and (row[:, 42:] == 200).all()
    tall = media.side_by_side([a, b], height=60, gap=0)
    assert tall.shape == (60, 120 + 60, 3)
    assert np.array_equal(media.side_by_side([a]), a)
    with pytest.raises(ValueError):
        media.side_by_side([])
    with pytest.raises(ValueError):
        media.side_by_side([a, np.zeros((4, 4), np.uint8)])


def test_mean_abs_diff_on_known_arrays() -> None:
    zeros = np.zeros((10, 20, 3), np.uint8)
    assert media.mean_abs_diff(zeros, zeros) == 0.0
    assert media.mean_abs_diff(zeros, np.full_like(zeros, 255)) == 255.0
    half = zeros.copy()
    half[:5] = 30  # half the pixels differ by 30
    assert media.mean_abs_diff(zeros, half) == pytest.approx(15.0)
    assert media.mean_abs_diff(half, zeros) == pytest.approx(15.0)
    one_channel = zeros.copy()
    one_channel[..., 2] = 9
    assert media.mean_abs_diff(one_channel, zeros) == pytest.approx(3.0)
    # A different size is scaled to the first image's size first.
    assert media.mean_abs_diff(np.full((10, 20, 3), 50, np.uint8), np.full((40, 80, 3), 50, np.uint8)) < 0.5
    assert media.mean_abs_diff(np.full((10, 20, 3), 50, np.uint8), np.full((5, 7, 3), 80, np.uint8)) > 29
    with pytest.raises(ValueError):
        media.mean_abs_diff(zeros, np.zeros((10, 20), np.uint8))


@pytest.mark.parametrize(
    ("codec", "pix_fmt", "name", "kind"),
    [
        ("png", "rgb24", "key.png", "png"),
        ("mjpeg", "yuvj420p", "key.jpg", "jpeg"),
        ("libwebp", "yuv420p", "k.webp", "webp"),
    ],
)
def test_load_image_formats(tmp_path: Path, codec: str, pix_fmt: str, name: str, kind: str) -> None:
    rgb = natural_image(180, 320, seed=11)
    path = tmp_path / name
    path.write_bytes(encode_image(rgb, codec, pix_fmt))
    info = media.load_image(path)
    assert (info.format, info.width, info.height, info.aspect_ratio) == (kind, 320, 180, "16:9")
    assert info.source == str(path)
    assert info.rgb.shape == (180, 320, 3) and media.mean_abs_diff(info.rgb, rgb) < 8
    from_bytes = media.load_image(path.read_bytes())
    assert from_bytes.format == kind and np.array_equal(from_bytes.rgb, info.rgb)


@pytest.mark.parametrize(
    ("size", "expected"), [((180, 320), "9:16"), ((200, 200), "1:1"), ((300, 200), "16:9"), ((200, 290), "9:16")]
)
def test_load_image_aspect_ratio(size: tuple[int, int], expected: str) -> None:
    info = media.load_image(media.encode_png(natural_image(size[1], size[0])))
    assert (info.width, info.height) == size
    assert info.aspect_ratio == expected == media.nearest_aspect_ratio(*size)


def test_load_image_errors_name_the_file_and_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    with pytest.raises(ValueError, match=rf"{re.escape(str(missing))}: no such file"):
        media.load_image(missing)
    text = tmp_path / "notes.png"
    text.write_text("a lighthouse at dawn\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(text))}: not a PNG, JPEG or WebP image"):
        media.load_image(text)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{re.escape(str(empty))}: empty"):
        media.load_image(empty)
    with pytest.raises(ValueError, match="cannot read"):
        media.load_image(tmp_path)  # a directory
    png = media.encode_png(natural_image(64, 96))
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png[: len(png) // 2])
    with pytest.raises(ValueError, match=rf"{re.escape(str(cut_png))}: a PNG file that does not decode"):
        media.load_image(cut_png)
    jpeg = media.encode_jpeg(natural_image(64, 96))
    cut_jpeg = tmp_path / "cut.jpg"
    cut_jpeg.write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(ValueError, match=rf"{re.escape(str(cut_jpeg))}: a JPEG cut short"):
        media.load_image(cut_jpeg)
    gif = tmp_path / "anim.gif"
    gif.write_bytes(b"GIF89a" + bytes(64))
    with pytest.raises(ValueError, match="not a PNG, JPEG or WebP"):
        media.load_image(gif)
    with pytest.raises(ValueError, match="image bytes: empty"):
        media.load_image(b"")


# ----------------------------------------------------------------------------------------------- join


def _all_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [media.video_frame_to_rgb(f) for f in container.decode(video=0)]


@pytest.mark.parametrize("kind", ["plain", "audio"])
def test_join_remux(clips: dict[str, Path], tmp_path: Path, kind: str) -> None:
    parts = [clips[f"{kind}{i}"] for i in range(3)]
    infos = [media.probe(p) for p in parts]
    result = media.join_clips(parts, tmp_path / "joined.mp4")
    assert result.remuxed
    assert result.path == tmp_path / "joined.mp4"
    joined = media.probe(result.path)
    total = sum(i.duration_seconds for i in infos)
    assert result.duration_seconds == pytest.approx(total, abs=1 / FPS)
    assert joined.duration_seconds == pytest.approx(total, abs=1 / FPS)
    assert joined.frame_count == sum(i.frame_count for i in infos)
    assert joined.has_audio == (kind == "audio")
    assert media.is_decodable_mp4(result.path)
    frames = _all_frames(result.path)
    assert len(frames) == joined.frame_count
    start = 0
    for part, info in zip(parts, infos, strict=True):
        # Stream copy: the seam frames decode to exactly the clips' own frames.
        assert np.array_equal(frames[start], media.read_frame(part, "first"))
        assert np.array_equal(frames[start + info.frame_count - 1], media.read_frame(part, "last"))
        start += info.frame_count
    assert leftovers(tmp_path) == []


def test_join_reencodes_mixed_sizes(clips: dict[str, Path], tmp_path: Path) -> None:
    parts = [clips["plain2"], clips["portrait"], clips["square30"]]
    infos = [media.probe(p) for p in parts]
    result = media.join_clips(parts, tmp_path / "mixed.mp4")
    assert not result.remuxed
    joined = media.probe(result.path)
    assert (joined.width, joined.height) == (320, 180)
    assert joined.has_audio  # the portrait clip has audio; the others get silence
    total = sum(i.duration_seconds for i in infos)
    assert joined.duration_seconds == pytest.approx(total, abs=1 / FPS)
    assert result.duration_seconds == pytest.approx(total, abs=1 / FPS)
    assert joined.frame_count == sum(i.frame_count for i in infos)
    assert media.is_decodable_mp4(result.path)
    frames = _all_frames(result.path)
    assert len(frames) == joined.frame_count
    # The first clip is only re-encoded (same size), so it still looks the same.
    assert (channel_diff(frames[0], media.read_frame(parts[0], "first")) < 4).all()
    # The portrait clip is pillar-boxed: black borders left and right.
    portrait_frame = frames[infos[0].frame_count + 5]
    assert portrait_frame[:, :60].max() < 24 and portrait_frame[:, -60:].max() < 24
    with av.open(str(result.path)) as container:
        audio = container.streams.audio[0]
        assert float(audio.duration * audio.time_base) == pytest.approx(total, abs=0.05)
    assert leftovers(tmp_path) == []


def test_join_rejects_empty_and_keeps_destination_on_error(clips: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        media.join_clips([], tmp_path / "none.mp4")
    dest = tmp_path / "dest.mp4"
    dest.write_bytes(b"old")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(Exception):  # noqa: B017 - any decode error will do
        media.join_clips([clips["plain0"], broken], dest)
    assert dest.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_accepts_pathlike_and_str(clips: dict[str, Path], tmp_path: Path) -> None:
    as_str = os.fspath(clips["plain2"])
    assert media.probe(as_str) == media.probe(clips["plain2"])
    out = media.join_clips([as_str], str(tmp_path / "single.mp4"))
    assert out.remuxed and media.probe(out.path).frame_count == media.probe(as_str).frame_count
