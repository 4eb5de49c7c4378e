"""PyAV plumbing shared by :mod:`.probe`, :mod:`.frames` and :mod:`.join` (private).

Opening a file, finding its video stream, reading its timing from the index, and decoding the frame on screen
at given times. Kept apart so that checking a file (:mod:`.probe`) and reading pictures from it
(:mod:`.frames`) can both decode frames without importing each other.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.container import InputContainer
from av.stream import Stream
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

StrPath = str | os.PathLike[str]


def open_input(path: StrPath) -> InputContainer:
    return av.open(os.fspath(path), mode="r")


def video_stream(container: InputContainer) -> VideoStream:
    if not container.streams.video:
        raise ValueError(f"{container.name}: no video stream")
    return container.streams.video[0]


def time_base(stream: Stream) -> Fraction:
    """``stream``'s time base (every demuxed stream has one; a ``ValueError`` names a stream that has not)."""
    if stream.time_base is None:
        raise ValueError(f"stream {stream.index} has no time base")
    return Fraction(stream.time_base)


def mp4_format(path: Path) -> str:
    """The muxer for ``path``: "mov" for .mov/.qt, else "mp4"."""
    return "mov" if path.suffix.lower() in {".mov", ".qt"} else "mp4"


def is_mp4(container: InputContainer) -> bool:
    return "mp4" in container.format.name.split(",")


def even(value: float, minimum: int = 2) -> int:
    """Round to the nearest even integer (ties away from zero) and clamp to ``minimum``."""
    return max(minimum, 2 * math.floor(value / 2 + 0.5))


@dataclass(frozen=True)
class StreamTiming:
    start: int  # first presentation timestamp, stream time base
    duration: int  # presentation duration, stream time base
    time_base: Fraction
    frame_count: int


def video_timing(container: InputContainer, stream: VideoStream) -> StreamTiming:
    """Frame count (no decoding) plus presentation start and duration of ``stream``.

    MP4/MOV: from the sample index read with the header (nothing else is read). Other containers, or an
    MP4 without a stream duration: by demuxing the video packets.
    """
    tb = stream.time_base or Fraction(1, 1_000_000)
    if is_mp4(container) and stream.duration and len(stream.index_entries):
        count = sum(1 for entry in stream.index_entries if not entry.is_discard)
        first = stream.start_time or 0
        return StreamTiming(start=int(first), duration=int(stream.duration), time_base=Fraction(tb), frame_count=count)
    count = 0
    min_pts: int | None = None
    max_end: int | None = None
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:
            continue
        count += 1
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is None:
            continue
        end = pts + (packet.duration or 0)
        min_pts = pts if min_pts is None else min(min_pts, pts)
        max_end = end if max_end is None else max(max_end, end)
    start = stream.start_time if stream.start_time is not None else (min_pts or 0)
    if stream.duration:
        duration = int(stream.duration)
    elif max_end is not None and min_pts is not None:
        duration = max_end - min_pts
    elif container.duration:
        duration = round(Fraction(container.duration, av.time_base) / tb)
    else:
        duration = 0
    return StreamTiming(start=int(start), duration=duration, time_base=Fraction(tb), frame_count=count)


def stream_fps(stream: VideoStream, timing: StreamTiming) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    seconds = timing.duration * timing.time_base
    if seconds > 0 and timing.frame_count:
        return Fraction(timing.frame_count) / seconds
    return Fraction(0)


def _pick(frames: Iterable[VideoFrame], targets: Sequence[float], *, from_start: bool) -> list[VideoFrame] | None:
    """For ascending ``targets`` (stream ticks), the last frame presented at or before each one.

    Targets past the last frame get the last frame. Targets before the first decoded frame get that frame when
    decoding ``from_start`` (it is on screen from the start); otherwise (after a seek that landed too late) the
    answer is ``None``, as it is when nothing decodes.
    """
    chosen: list[VideoFrame] = []
    previous: VideoFrame | None = None
    previous_pts = -math.inf
    for frame in frames:
        # Frames leave the decoder in presentation order; a missing pts is taken as "right after the previous".
        pts = frame.pts if frame.pts is not None else previous_pts + 1
        while len(chosen) < len(targets) and pts > targets[len(chosen)]:
            if previous is None and not from_start:
                return None
            chosen.append(previous if previous is not None else frame)
        if len(chosen) == len(targets):
            return chosen
        previous, previous_pts = frame, pts
    if previous is None:
        return None
    return chosen + [previous] * (len(targets) - len(chosen))


def frames_shown_at(path: StrPath, seconds: Sequence[float]) -> list[VideoFrame]:
    """The frame on screen at each time in ``seconds`` (from the start of the stream), in the given order.

    That is the last frame presented at or before the time: 0 gives the first frame, any time at or past the
    end (``math.inf`` included) the true last frame. One forward decode from the keyframe before the earliest
    time (from the start when seeking cannot help or lands too late). Raises ``ValueError`` for a negative or
    NaN time or a file without decodable video frames.
    """
    for value in seconds:
        if not value >= 0:  # also catches NaN
            raise ValueError(f"times must be >= 0 seconds, not {value!r}")
    if not seconds:
        return []
    picked: list[VideoFrame] | None = None
    with open_input(path) as container:
        stream = video_stream(container)
        tb = Fraction(stream.time_base or Fraction(1, 1_000_000))
        start = stream.start_time or 0
        ticks = [start + round(Fraction(s) / tb) if math.isfinite(s) else math.inf for s in seconds]
        order = sorted(range(len(ticks)), key=ticks.__getitem__)
        targets = [ticks[i] for i in order]
        seek_to = targets[0]
        if stream.duration:
            seek_to = min(seek_to, start + int(stream.duration) - 1)  # past the end: the last keyframe
        if start < seek_to < math.inf:
            container.seek(int(seek_to), stream=stream, backward=True, any_frame=False)
            picked = _pick(container.decode(stream), targets, from_start=False)
    if picked is None:
        with open_input(path) as container:
            picked = _pick(container.decode(video_stream(container)), targets, from_start=True)
    if picked is None:
        raise ValueError(f"{os.fspath(path)}: no decodable video frames")
    result = list(picked)
    for rank, index in enumerate(order):
        result[index] = picked[rank]
    return result
