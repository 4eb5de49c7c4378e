"""What a video file is, and whether it is whole: :func:`probe`, :func:`is_decodable_mp4`, aspect ratio names.

:func:`probe` reads only headers and the sample index (no decoding). :func:`is_decodable_mp4` is the check run
on every download before it is stored: it rejects a file cut short anywhere, even when the cut leaves a
playable prefix.

Examples:
    ```python
    from kling_prefect.media import is_decodable_mp4, probe

    if is_decodable_mp4("clip-01.mp4"):
        info = probe("clip-01.mp4")
        info.duration_seconds, info.frame_count, info.aspect_ratio  # (5.0, 120, '16:9')
    ```
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from fractions import Fraction

import av

from kling_prefect.media._container import (
    StrPath,
    frames_shown_at,
    is_mp4,
    open_input,
    stream_fps,
    video_stream,
    video_timing,
)

__all__ = ["ASPECT_RATIOS", "VideoInfo", "aspect_ratio_name", "is_decodable_mp4", "nearest_aspect_ratio", "probe"]

#: The aspect ratios Kling renders, as width / height.
ASPECT_RATIOS: dict[str, float] = {"16:9": 16 / 9, "9:16": 9 / 16, "1:1": 1.0}
# Within this relative distance of a named ratio a size counts as that ratio (1280x718 is "16:9").
_ASPECT_TOLERANCE = 0.02
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    av.FFmpegError,
    OSError,
    ValueError,
    EOFError,
    RuntimeError,
    IndexError,
    StopIteration,
)


def nearest_aspect_ratio(width: int, height: int) -> str:
    """The one of "16:9", "9:16", "1:1" closest to ``width`` x ``height`` (compared on a log scale).

    Raises ``ValueError`` unless both sides are positive.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid size {width}x{height}")
    ratio = width / height
    return min(ASPECT_RATIOS, key=lambda name: abs(math.log(ratio / ASPECT_RATIOS[name])))


def aspect_ratio_name(width: int, height: int) -> str:
    """:func:`nearest_aspect_ratio` when within 2% of it, else the reduced ``"w:h"`` (``"4:3"``)."""
    if width <= 0 or height <= 0:
        return f"{width}:{height}"
    name = nearest_aspect_ratio(width, height)
    if abs((width / height) / ASPECT_RATIOS[name] - 1) <= _ASPECT_TOLERANCE:
        return name
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


@dataclass(frozen=True)
class VideoInfo:
    """Basic facts about a video file (first video stream)."""

    duration_seconds: float
    width: int
    height: int
    fps: float
    frame_count: int
    video_codec: str
    has_audio: bool

    @property
    def aspect_ratio(self) -> str:
        """Nearest of "16:9", "9:16", "1:1" (within 2%), else the reduced ``"w:h"``."""
        return aspect_ratio_name(self.width, self.height)


def probe(path: StrPath) -> VideoInfo:
    """Describe ``path`` without decoding: size, codec and rate from the headers, exact frame count from the
    MP4 sample index (or by counting packets for other containers).

    ``duration_seconds`` is the video stream's presentation duration (container duration as a fallback).
    """
    with open_input(path) as container:
        stream = video_stream(container)
        ctx = stream.codec_context
        has_audio = bool(container.streams.audio)
        width, height = ctx.width, ctx.height
        codec = ctx.name
        timing = video_timing(container, stream)
        fps = stream_fps(stream, timing)
    return VideoInfo(
        duration_seconds=float(timing.duration * timing.time_base),
        width=width,
        height=height,
        fps=float(fps),
        frame_count=timing.frame_count,
        video_codec=codec,
        has_audio=has_audio,
    )


def _boxes_complete(path: StrPath) -> bool:
    """True if the file's top-level MP4 boxes are all complete and exactly tile the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        pos = 0
        while pos < size:
            fh.seek(pos)
            header = fh.read(8)
            if len(header) < 8:
                return False
            (box_size,) = struct.unpack(">I", header[:4])
            minimum = 8
            if box_size == 1:
                large = fh.read(8)
                if len(large) < 8:
                    return False
                (box_size,) = struct.unpack(">Q", large)
                minimum = 16
            elif box_size == 0:
                return True  # the last box runs to the end of the file
            if box_size < minimum:
                return False
            pos += box_size
    return pos == size


def is_decodable_mp4(path: StrPath) -> bool:
    """Cheap integrity check: an MP4/MOV with a video stream whose first and true last frames decode.

    Also requires the top-level boxes to be complete (they must exactly tile the file), every sample in the
    index to lie inside the file and the last decoded frame to reach the advertised end of the stream, so a
    file cut short anywhere is rejected.
    """
    try:
        size = os.path.getsize(path)
        if not _boxes_complete(path):
            return False
        with open_input(path) as container:
            if not is_mp4(container):
                return False
            stream = video_stream(container)
            for s in container.streams:
                for entry in s.index_entries:
                    if entry.pos + entry.size > size:
                        return False  # the index points past the end of the file: truncated
            first = next(iter(container.decode(stream)), None)
            if first is None:
                return False
            tb = stream.time_base
            start = stream.start_time or 0
            duration = stream.duration
            rate = stream.average_rate or stream.guessed_rate
        (last,) = frames_shown_at(path, [math.inf])
        if duration and tb and rate and last.pts is not None:
            frame_ticks = 1 / (Fraction(rate) * tb)
            if last.pts + Fraction(5, 2) * frame_ticks < start + duration:
                return False
        return True
    except _DECODE_ERRORS:
        return False
