"""Synthetic clip rendering for the ShortAPI emulator (PyAV + numpy only, independent of the server).

:func:`render_clip` writes a real H.264 (yuv420p, BT.601 limited range) MP4 with exactly
``round(duration_s * fps)`` frames:

* without images, a deterministic moving pattern whose colours, band angle/frequency, shape and tone
  derive from a SHA-256 of ``seed_text`` (different prompts give visibly different clips);
* with ``first_image`` only, frame 0 is that image and the clip drifts/zooms away from it with a slow colour
  shift;
* with ``last_image`` too (Kling o1's ``frame`` action with two images), the clip is a transition: frame 0 is
  exactly the first image, the final frame exactly the last, and the frames between cross-fade from one to
  the other.

The encode uses crf 12, so decoded frames match their RGB sources closely (mean absolute error per channel
about 1-2 on natural images when converted back with :func:`kling_prefect.media.read_frame`).
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.frame import VideoFrame
from av.video.reformatter import Interpolation

from kling_prefect.atomic import atomic_path
from kling_prefect.media import StrPath, decode_image, resize_rgb
from kling_prefect.media.frames import rgb_to_video_frame, tag_bt601

__all__ = [
    "CRF",
    "FRAME_SIZES",
    "MAX_SIDE",
    "frame_size",
    "free_box_header",
    "image_frame_size",
    "iter_free_box",
    "render_clip",
]

#: Output size per supported aspect ratio for pattern clips.
FRAME_SIZES: dict[str, tuple[int, int]] = {"16:9": (320, 180), "9:16": (180, 320), "1:1": (240, 240)}
#: Longest side of clips rendered from an image.
MAX_SIDE = 320
#: x264 constant rate factor (high quality so decoded frames match their sources closely).
CRF = 12
_PRESET = "veryfast"
_AUDIO_RATE = 44_100
# FFmpeg's AAC encoder defaults to ~69 kb/s for mono, which distorts a pure tone while its rate control
# settles; 96 kb/s with 100 ms fades decodes cleanly (max error < 0.01 on a 0.25 amplitude) and encodes fast.
_AUDIO_BIT_RATE = 96_000
_FADE_S = 0.1
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)
_MAX_FREE_BOX_32 = 0xFFFF_FFFF


def frame_size(aspect_ratio: str) -> tuple[int, int]:
    """``(width, height)`` of pattern clips: "16:9" -> (320, 180), "9:16" -> (180, 320), "1:1" -> (240, 240)."""
    try:
        return FRAME_SIZES[aspect_ratio]
    except KeyError:
        supported = ", ".join(FRAME_SIZES)
        raise ValueError(f"unsupported aspect ratio {aspect_ratio!r} (supported: {supported})") from None


def image_frame_size(width: int, height: int) -> tuple[int, int]:
    """Clip size for a ``width`` x ``height`` first image.

    Kept as is when both dimensions are even and the longest side is <= 320 (no resampling); otherwise the
    image's aspect is fitted to a 320-pixel longest side, rounded to even dimensions (minimum 2).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid image size {width}x{height}")
    if width % 2 == 0 and height % 2 == 0 and max(width, height) <= MAX_SIDE:
        return width, height
    scale = MAX_SIDE / max(width, height)

    def even(v: float) -> int:
        return max(2, min(MAX_SIDE, 2 * math.floor(v * scale / 2 + 0.5)))

    return even(width), even(height)


def free_box_header(n: int) -> bytes:
    """Header of a top-level MP4 ``free`` box that is ``n`` bytes long in total (header included).

    Write the header and then ``n - len(header)`` zero bytes after the end of an MP4 file; demuxers skip it.
    Uses the 64-bit ``largesize`` form (16-byte header) when ``n`` does not fit in 32 bits.
    """
    if n < 8:
        raise ValueError("a free box is at least 8 bytes")
    if n <= _MAX_FREE_BOX_32:
        return struct.pack(">I4s", n, b"free")
    return struct.pack(">I4sQ", 1, b"free", n)


def iter_free_box(n: int, chunk_size: int = _CHUNK) -> Iterator[bytes]:
    """Yield a whole ``n``-byte ``free`` box: the header, then zeros in chunks of at most ``chunk_size``."""
    header = free_box_header(n)
    yield header
    zeros = _ZEROS if chunk_size == _CHUNK else bytes(chunk_size)
    remaining = n - len(header)
    while remaining > 0:
        take = min(remaining, chunk_size)
        yield zeros if take == chunk_size else zeros[:take]
        remaining -= take


# ------------------------------------------------------------------------------------------- palette


@dataclass(frozen=True)
class _Style:
    colours: np.ndarray  # (3, 3) float32 RGB 0..255
    angle: float
    bands: float
    speed: float
    square: bool
    phase: tuple[float, float]
    drift: tuple[float, float]
    tone_hz: float


def _style(seed_text: str) -> _Style:
    d = hashlib.sha256(seed_text.encode("utf-8")).digest()
    base_hue = d[0] / 256
    colours = []
    for k in range(3):
        hue = (base_hue + k / 3 + (d[1 + k] / 256 - 0.5) * 0.2) % 1.0
        sat = 0.55 + 0.4 * d[4 + k] / 255
        val = 0.45 + 0.5 * d[7 + k] / 255
        colours.append([c * 255 for c in colorsys.hsv_to_rgb(hue, sat, val)])
    return _Style(
        colours=np.asarray(colours, dtype=np.float32),
        angle=d[10] / 256 * 2 * math.pi,
        bands=1.0 + d[11] % 4,
        speed=0.6 + 1.2 * d[12] / 255,
        square=bool(d[13] & 1),
        phase=(d[14] / 256, d[15] / 256),
        drift=((d[16] / 255) * 2 - 1, (d[17] / 255) * 2 - 1),
        tone_hz=220.0 + (int.from_bytes(d[18:20], "big") % 440),
    )


# -------------------------------------------------------------------------------------------- frames


def _pattern_frames(width: int, height: int, n: int, style: _Style) -> Iterator[np.ndarray]:
    ys, xs = np.meshgrid(
        np.linspace(0, 1, height, dtype=np.float32), np.linspace(0, 1, width, dtype=np.float32), indexing="ij"
    )
    # Moving colour bands: a per-pixel phase index (uint8, wraps naturally) into a 256-entry colour table.
    proj = (xs * math.cos(style.angle) + ys * math.sin(style.angle)) * np.float32(256 * style.bands)
    phase = (np.floor(proj).astype(np.int64) % 256).astype(np.uint8)
    c1, c2, c3 = style.colours
    wave = 0.5 + 0.5 * np.sin(np.arange(256) * (2 * math.pi / 256))
    table = np.clip(c1[None, :] + (c2 - c1)[None, :] * wave[:, None].astype(np.float32) + 0.5, 0, 255)
    table = table.astype(np.uint8)
    shape_colour = c3[None, None, :]
    aspect = width / height
    radius = 0.22
    bar = max(2, height // 45)
    for i in range(n):
        t = i / max(1, n - 1)
        shift = np.uint8(round(256 * style.speed * t) % 256)
        img = np.take(table, phase - shift, axis=0)
        cx = 0.5 + 0.32 * math.sin(2 * math.pi * (0.8 * t + style.phase[0]))
        cy = 0.5 + 0.30 * math.cos(2 * math.pi * (0.6 * t + style.phase[1]))
        # Only touch the shape's bounding box.
        x_lo = max(0, int((cx - radius / aspect - 0.02) * width))
        x_hi = min(width, int((cx + radius / aspect + 0.02) * width) + 1)
        y_lo = max(0, int((cy - radius - 0.02) * height))
        y_hi = min(height, int((cy + radius + 0.02) * height) + 1)
        if x_lo < x_hi and y_lo < y_hi:
            dx = (xs[y_lo:y_hi, x_lo:x_hi] - cx) * aspect
            dy = ys[y_lo:y_hi, x_lo:x_hi] - cy
            dist = np.maximum(np.abs(dx), np.abs(dy)) if style.square else np.sqrt(dx * dx + dy * dy)
            alpha = np.clip((radius - dist) * 60, 0, 1)[..., None]
            box = img[y_lo:y_hi, x_lo:x_hi].astype(np.float32)
            img[y_lo:y_hi, x_lo:x_hi] = (box + (shape_colour - box) * alpha + 0.5).astype(np.uint8)
        # Progress bar along the bottom edge: every frame differs, and the clip's position is visible.
        img[height - bar :, : round(t * width)] = 255
        yield img


def _push_in(src: VideoFrame, zoom: float, drift: tuple[float, float]) -> np.ndarray:
    """``src`` enlarged by ``zoom`` (>= 1) and cropped back to its size, the crop shifted towards ``drift``."""
    width, height = src.width, src.height
    zw, zh = max(width, round(width * zoom)), max(height, round(height * zoom))
    if (zw, zh) == (width, height):
        return src.to_ndarray()
    big = src.reformat(width=zw, height=zh, interpolation=Interpolation.BILINEAR).to_ndarray()
    ox = min(zw - width, max(0, round((zw - width) / 2 * (1 + drift[0]))))
    oy = min(zh - height, max(0, round((zh - height) / 2 * (1 + drift[1]))))
    return big[oy : oy + height, ox : ox + width]


def _image_frames(first: np.ndarray, n: int, style: _Style) -> Iterator[np.ndarray]:
    """Frame 0 is ``first``; then a slow zoom (to 1.12x) drifting in a seed-dependent direction and a tint shift.

    Integer arithmetic in uint16 keeps this well under a millisecond per 320x180 frame.
    """
    src = VideoFrame.from_ndarray(np.ascontiguousarray(first), format="rgb24")
    tint = style.colours[0].astype(np.uint16)
    yield first
    for i in range(1, n):
        t = i / (n - 1)
        crop = _push_in(src, 1 + 0.12 * t, style.drift)
        a = round(256 * (1 - 0.22 * t))  # weight of the zoomed image (out of 256); the rest is tint
        acc = crop.astype(np.uint16) * np.uint16(a) + (tint * np.uint16(256 - a) + np.uint16(128))
        yield (acc >> 8).astype(np.uint8)


def _transition_frames(first: np.ndarray, last: np.ndarray, n: int, style: _Style) -> Iterator[np.ndarray]:
    """Kling's ``frame`` action with two images: frame 0 is exactly ``first`` and frame ``n - 1`` exactly ``last``.

    In between, a smoothstep cross-fade under a gentle camera push: ``first`` zooms in (to 1.06x) as it fades
    out, ``last`` arrives zoomed and settles to its own framing, so the middle frames are visibly both.
    """
    if n == 1:
        yield first  # a single-frame clip cannot end elsewhere: the first image wins
        return
    src, dst = (VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24") for image in (first, last))
    yield first
    for i in range(1, n - 1):
        t = i / (n - 1)
        b = round(256 * t * t * (3 - 2 * t))  # weight of the last image (out of 256)
        outgoing = _push_in(src, 1 + 0.06 * t, style.drift).astype(np.uint16)
        incoming = _push_in(dst, 1 + 0.06 * (1 - t), style.drift).astype(np.uint16)
        yield ((outgoing * np.uint16(256 - b) + incoming * np.uint16(b) + np.uint16(128)) >> 8).astype(np.uint8)
    yield last


def _tone(start: int, stop: int, total: int, hz: float) -> np.ndarray:
    """Samples ``start:stop`` (1 x n float32) of a ``total``-sample sine tone with 100 ms fades at both ends."""
    idx = np.arange(start, stop, dtype=np.float64)
    wave = 0.25 * np.sin(2 * math.pi * hz * idx / _AUDIO_RATE)
    fade = max(1, min(total // 2, int(_FADE_S * _AUDIO_RATE)))
    wave *= np.clip(np.minimum(idx, total - 1 - idx) / fade, 0, 1)
    return wave.astype(np.float32)[None, :]


# -------------------------------------------------------------------------------------------- render


def render_clip(
    out_path: StrPath,
    *,
    duration_s: float,
    aspect_ratio: str | None = "16:9",
    seed_text: str = "",
    first_image: bytes | None = None,
    last_image: bytes | None = None,
    audio: bool = False,
    fps: int = 24,
    padding_bytes: int = 0,
) -> Path:
    """Render a synthetic H.264 MP4 of exactly ``round(duration_s * fps)`` frames to ``out_path`` (atomically).

    ``aspect_ratio`` picks the pattern size (see :func:`frame_size`; ``None`` means "16:9") and is ignored when
    ``first_image`` is given: the clip then takes the image's size (see :func:`image_frame_size`).
    ``last_image`` (only used together with ``first_image``) is stretched to that size and is the final frame,
    reached by a cross-fade from the first (with a single-frame clip the first image wins).  ``audio`` adds a
    mono AAC sine tone of the same duration.  ``padding_bytes`` > 0 appends a ``free`` box of exactly that many
    bytes after the movie (file size = movie size + ``padding_bytes``), streamed in 1 MiB chunks.
    """
    if isinstance(duration_s, bool) or not (math.isfinite(float(duration_s)) and float(duration_s) > 0):
        raise ValueError(f"duration_s must be a positive number, not {duration_s!r}")
    if isinstance(fps, bool) or int(fps) != fps or not 1 <= fps <= 240:
        raise ValueError(f"fps must be an integer in 1..240, not {fps!r}")
    fps = int(fps)
    padding_bytes = int(padding_bytes)
    if padding_bytes < 0 or 0 < padding_bytes < 8:
        raise ValueError("padding_bytes must be 0 or at least 8")
    n = max(1, round(float(duration_s) * fps))
    style = _style(seed_text)

    if first_image is not None:
        first = decode_image(first_image)
        width, height = image_frame_size(first.shape[1], first.shape[0])
        first = resize_rgb(first, width, height)
        if last_image is None:
            frames = _image_frames(first, n, style)
        else:
            # The last image is stretched to the first's shape: the clip's shape is the first image's.
            frames = _transition_frames(first, resize_rgb(decode_image(last_image), width, height), n, style)
    else:
        width, height = frame_size(aspect_ratio or "16:9")
        frames = _pattern_frames(width, height, n, style)

    dest = Path(os.fspath(out_path))
    with atomic_path(dest) as tmp:
        fmt = "mov" if dest.suffix.lower() == ".mov" else "mp4"
        with av.open(os.fspath(tmp), mode="w", format=fmt) as out:
            video = out.add_stream("libx264", rate=fps)
            video.width = width
            video.height = height
            video.pix_fmt = "yuv420p"
            video.codec_context.time_base = Fraction(1, fps)
            video.codec_context.gop_size = 2 * fps
            video.codec_context.thread_count = 1  # bit-identical output whatever the machine (and fast enough)
            # mbtree reads uninitialised lookahead memory in x264, making output differ run to run.
            video.options = {"crf": str(CRF), "preset": _PRESET, "x264-params": "mbtree=0"}
            tag_bt601(video)
            sound = None
            if audio:
                sound = out.add_stream("aac", rate=_AUDIO_RATE)
                sound.layout = "mono"
                sound.bit_rate = _AUDIO_BIT_RATE
            total_samples = round(Fraction(n, fps) * _AUDIO_RATE)
            samples_done = 0
            for i, rgb in enumerate(frames):
                frame = rgb_to_video_frame(rgb)
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                out.mux(video.encode(frame))
                if sound is not None:
                    # Audio for this frame's time span, so the file is interleaved (progressive playback).
                    upto = round(Fraction(i + 1, fps) * _AUDIO_RATE)
                    tone = av.AudioFrame.from_ndarray(
                        _tone(samples_done, upto, total_samples, style.tone_hz), format="fltp", layout="mono"
                    )
                    tone.sample_rate = _AUDIO_RATE
                    tone.pts = samples_done
                    tone.time_base = Fraction(1, _AUDIO_RATE)
                    out.mux(sound.encode(tone))
                    samples_done = upto
            out.mux(video.encode(None))
            if sound is not None:
                out.mux(sound.encode(None))
        if padding_bytes:
            with open(tmp, "ab") as fh:
                for chunk in iter_free_box(padding_bytes):
                    fh.write(chunk)
    return dest
