"""Tests for kling_prefect.media and kling_prefect.emulator.video: real files, no mocks."""

from __future__ import annotations

import os
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


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
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
    assert mean_abs_diff(first, last).mean() > 5, "the clip should move"
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
    assert mean_abs_diff(media.read_frame(a, "first"), media.read_frame(c, "first")).mean() > 20


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
    assert (mean_abs_diff(media.read_frame(path, "first"), first) < 3).all()
    assert (mean_abs_diff(media.read_frame(path, "last"), last) < 3).all()
    middle = media.read_frame(path, info.frame_count // 2)
    assert mean_abs_diff(middle, first).mean() > 3 and mean_abs_diff(middle, last).mean() > 3


def test_first_image_animates_away(tmp_path: Path) -> None:
    first = natural_image(240, 240, seed=3)
    jpeg = encode_image(first, "mjpeg", "yuvj444p")
    path = video.render_clip(tmp_path / "sq.mp4", duration_s=3, first_image=jpeg, seed_text="drift")
    info = media.probe(path)
    assert (info.width, info.height, info.aspect_ratio) == (240, 240, "1:1")
    decoded_source = media.decode_image(jpeg)
    assert (mean_abs_diff(media.read_frame(path, "first"), decoded_source) < 3).all()
    assert mean_abs_diff(media.read_frame(path, "last"), decoded_source).mean() > 5


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
    assert (mean_abs_diff(media.read_frame(path, "first"), reference) < 3).all()


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
        assert (mean_abs_diff(decoded, natural_image(64, 96)) < 8).all()
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
    assert mean_abs_diff(thumb, mid).mean() < 3
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
    assert (mean_abs_diff(frames[0], media.read_frame(parts[0], "first")) < 4).all()
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
