"""Media helpers built on PyAV + numpy: probing, frame extraction, PNG encoding and clip joining.

Everything here works on local files.  Every function that writes a file writes it atomically: the data
goes to a hidden temporary file in the destination directory, which is flushed to disk and then moved over
the destination with :func:`os.replace`, so readers never observe a half-written file.

Colour conversions between YUV and RGB use swscale's accurate-rounding / full-chroma flags
(:data:`DECODE_INTERPOLATION`, :data:`ENCODE_INTERPOLATION`); PyAV's defaults are noticeably lossier
(about 2.4 mean absolute error per channel on a round trip versus about 0.5).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import secrets
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.video.frame import VideoFrame
from av.video.reformatter import ColorRange, Colorspace, Interpolation
from av.video.stream import VideoStream

__all__ = [
    "DECODE_INTERPOLATION",
    "ENCODE_INTERPOLATION",
    "JoinResult",
    "StrPath",
    "VideoInfo",
    "atomic_output",
    "decode_image",
    "encode_png",
    "extract_last_frame",
    "is_decodable_mp4",
    "join_clips",
    "make_thumbnail",
    "probe",
    "read_frame",
    "rgb_to_video_frame",
    "tag_bt601",
    "video_frame_to_rgb",
]

StrPath = str | os.PathLike[str]

#: swscale flags for YUV -> RGB (accurate rounding, full chroma interpolation).
DECODE_INTERPOLATION = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
#: swscale flags for RGB -> YUV 4:2:0 (accurate rounding, filtered chroma subsampling).
ENCODE_INTERPOLATION = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INP
_SCALE_INTERPOLATION = Interpolation.BICUBIC | Interpolation.ACCURATE_RND
_DOWNSCALE_INTERPOLATION = Interpolation.AREA | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT

# FFmpeg enum values used to tag encoded H.264 streams as BT.601 limited range (what swscale produces).
_AVCOL_SPC_SMPTE170M = 6
_AVCOL_PRI_SMPTE170M = 6
_AVCOL_TRC_SMPTE170M = 6
_AVCOL_RANGE_MPEG = 1

_ASPECTS: dict[str, float] = {"16:9": 16 / 9, "9:16": 9 / 16, "1:1": 1.0}
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    av.FFmpegError,
    OSError,
    ValueError,
    EOFError,
    RuntimeError,
    IndexError,
    StopIteration,
)


# --------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def atomic_output(path: StrPath) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and ``os.replace`` it onto ``path``.

    The temporary name keeps ``path``'s suffix (so PyAV can infer the container format from it).  On error
    the temporary file is removed and the destination is left untouched.
    """
    dest = Path(os.fspath(path))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{dest.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _write_bytes_atomic(path: StrPath, data: bytes) -> Path:
    dest = Path(os.fspath(path))
    with atomic_output(dest) as tmp:
        tmp.write_bytes(data)
    return dest


def _mp4_format(path: Path) -> str:
    return "mov" if path.suffix.lower() in {".mov", ".qt"} else "mp4"


def _open_input(path: StrPath) -> InputContainer:
    return av.open(os.fspath(path), mode="r")


def _video_stream(container: InputContainer) -> VideoStream:
    if not container.streams.video:
        raise ValueError(f"{container.name}: no video stream")
    return container.streams.video[0]


def _even(value: float, minimum: int = 2) -> int:
    """Round to the nearest even integer (ties away from zero) and clamp to ``minimum``."""
    return max(minimum, 2 * math.floor(value / 2 + 0.5))


def video_frame_to_rgb(frame: VideoFrame, width: int | None = None, height: int | None = None) -> np.ndarray:
    """Convert a decoded frame to an ``H x W x 3`` uint8 RGB array (optionally scaled) with accurate flags."""
    scaling = width is not None and (width != frame.width or height != frame.height)
    downscale = scaling and (width or 0) * (height or 0) < frame.width * frame.height
    flags = _DOWNSCALE_INTERPOLATION if downscale else DECODE_INTERPOLATION
    out = frame.reformat(width=width, height=height, format="rgb24", interpolation=flags)
    return np.ascontiguousarray(out.to_ndarray())


def rgb_to_video_frame(rgb: np.ndarray, pix_fmt: str = "yuv420p") -> VideoFrame:
    """Convert an RGB uint8 array to a YUV :class:`VideoFrame` (BT.601 limited range, accurate chroma)."""
    frame = VideoFrame.from_ndarray(_as_rgb(rgb), format="rgb24")
    return frame.reformat(
        format=pix_fmt,
        dst_colorspace=Colorspace.ITU601,
        dst_color_range=ColorRange.MPEG,
        interpolation=ENCODE_INTERPOLATION,
    )


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 array, got shape {arr.shape} dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def tag_bt601(stream: VideoStream) -> None:
    """Tag an encoder as BT.601 limited range so players convert our YUV back exactly as we produced it."""
    ctx = stream.codec_context
    ctx.colorspace = _AVCOL_SPC_SMPTE170M
    ctx.color_primaries = _AVCOL_PRI_SMPTE170M
    ctx.color_trc = _AVCOL_TRC_SMPTE170M
    ctx.color_range = _AVCOL_RANGE_MPEG


# ----------------------------------------------------------------------------------------------- probe


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
        if self.width <= 0 or self.height <= 0:
            return f"{self.width}:{self.height}"
        ratio = self.width / self.height
        name, target = min(_ASPECTS.items(), key=lambda item: abs(math.log(ratio / item[1])))
        if abs(ratio / target - 1) <= 0.02:
            return name
        g = math.gcd(self.width, self.height)
        return f"{self.width // g}:{self.height // g}"


@dataclass(frozen=True)
class _StreamTiming:
    start: int  # first presentation timestamp, stream time base
    duration: int  # presentation duration, stream time base
    time_base: Fraction
    frame_count: int


def _is_mp4(container: InputContainer) -> bool:
    return "mp4" in container.format.name.split(",")


def _video_timing(container: InputContainer, stream: VideoStream) -> _StreamTiming:
    """Frame count (no decoding) plus presentation start and duration of ``stream``.

    MP4/MOV: from the sample index read with the header (nothing else is read).  Other containers, or an
    MP4 without a stream duration: by demuxing the video packets.
    """
    tb = stream.time_base or Fraction(1, 1_000_000)
    if _is_mp4(container) and stream.duration and len(stream.index_entries):
        count = sum(1 for entry in stream.index_entries if not entry.is_discard)
        start = stream.start_time or 0
        return _StreamTiming(start=int(start), duration=int(stream.duration), time_base=Fraction(tb), frame_count=count)
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
    return _StreamTiming(start=int(start), duration=duration, time_base=Fraction(tb), frame_count=count)


def _stream_fps(stream: VideoStream, timing: _StreamTiming) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    seconds = timing.duration * timing.time_base
    if seconds > 0 and timing.frame_count:
        return Fraction(timing.frame_count) / seconds
    return Fraction(0)


def probe(path: StrPath) -> VideoInfo:
    """Describe ``path`` without decoding: size, codec and rate from the headers, exact frame count from the
    MP4 sample index (or by counting packets for other containers).

    ``duration_seconds`` is the video stream's presentation duration (container duration as a fallback).
    """
    with _open_input(path) as container:
        stream = _video_stream(container)
        ctx = stream.codec_context
        has_audio = bool(container.streams.audio)
        width, height = ctx.width, ctx.height
        codec = ctx.name
        timing = _video_timing(container, stream)
        fps = _stream_fps(stream, timing)
    return VideoInfo(
        duration_seconds=float(timing.duration * timing.time_base),
        width=width,
        height=height,
        fps=float(fps),
        frame_count=timing.frame_count,
        video_codec=codec,
        has_audio=has_audio,
    )


# ------------------------------------------------------------------------------------------ frame access


def _decode_last_frame(path: StrPath) -> VideoFrame | None:
    """Return the true last frame: seek to the last keyframe region, decode to the end (full decode fallback)."""
    with _open_input(path) as container:
        stream = _video_stream(container)
        start = stream.start_time or 0
        last: VideoFrame | None = None
        if stream.duration and stream.time_base:
            fps = stream.average_rate or stream.guessed_rate or 24
            frame_ticks = max(1, round(1 / (Fraction(fps) * stream.time_base)))
            target = start + int(stream.duration) - frame_ticks
            if target > start:
                container.seek(target, stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    last = frame
                if last is not None:
                    return last
    with _open_input(path) as container:
        stream = _video_stream(container)
        for frame in container.decode(stream):
            last = frame
    return last


def _decode_frame_at(path: StrPath, seconds: float) -> VideoFrame | None:
    """Return the first frame whose presentation time is >= ``seconds`` (or the last frame before the end)."""
    with _open_input(path) as container:
        stream = _video_stream(container)
        tb = stream.time_base or Fraction(1, 1_000_000)
        start = stream.start_time or 0
        target = start + round(Fraction(seconds) / tb)
        if target > start:
            container.seek(target, stream=stream, backward=True, any_frame=False)
        chosen: VideoFrame | None = None
        for frame in container.decode(stream):
            chosen = frame
            if frame.pts is None or frame.pts >= target:
                break
        return chosen


def _decode_index(path: StrPath, index: int) -> VideoFrame:
    with _open_input(path) as container:
        stream = _video_stream(container)
        for i, frame in enumerate(container.decode(stream)):
            if i == index:
                return frame
    raise IndexError(f"{os.fspath(path)}: frame {index} out of range")


def read_frame(path: StrPath, which: Literal["first", "last"] | int) -> np.ndarray:
    """Decode one frame as an ``H x W x 3`` uint8 RGB array.

    ``which`` is ``"first"``, ``"last"`` (the true last frame) or a frame index in presentation order
    (negative indices count from the end).
    """
    if which == "first":
        frame: VideoFrame | None = _decode_index(path, 0)
    elif which == "last":
        frame = _decode_last_frame(path)
    elif isinstance(which, int) and not isinstance(which, bool):
        index = which
        if index < 0:
            index += probe(path).frame_count
            if index < 0:
                raise IndexError(f"{os.fspath(path)}: frame {which} out of range")
        frame = _decode_index(path, index)
    else:
        raise ValueError(f"which must be 'first', 'last' or an int, not {which!r}")
    if frame is None:
        raise ValueError(f"{os.fspath(path)}: no decodable video frames")
    return video_frame_to_rgb(frame)


def decode_image(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG/WebP (anything FFmpeg reads as a single image) bytes to ``H x W x 3`` uint8 RGB."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = _video_stream(container)
            for frame in container.decode(stream):
                return video_frame_to_rgb(frame)
    except av.FFmpegError as exc:
        raise ValueError(f"cannot decode image: {exc}") from exc
    raise ValueError("cannot decode image: no frames")


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an ``H x W x 3`` uint8 RGB array as PNG (lossless) with PyAV's png encoder."""
    arr = _as_rgb(rgb)
    ctx = av.CodecContext.create("png", "w")
    ctx.width = arr.shape[1]
    ctx.height = arr.shape[0]
    ctx.pix_fmt = "rgb24"
    ctx.time_base = Fraction(1, 1)
    frame = VideoFrame.from_ndarray(arr, format="rgb24")
    frame.pts = 0
    packets = [*ctx.encode(frame), *ctx.encode(None)]
    return b"".join(bytes(p) for p in packets)


def extract_last_frame(video_path: StrPath, png_path: StrPath) -> Path:
    """Decode the true last frame of ``video_path`` and write it to ``png_path`` (atomically)."""
    return _write_bytes_atomic(png_path, encode_png(read_frame(video_path, "last")))


def make_thumbnail(video_path: StrPath, png_path: StrPath, width: int = 320) -> Path:
    """Write a PNG of the frame in the middle of the clip, scaled to ``width`` keeping the aspect ratio.

    Both output dimensions are even (an odd ``width`` is rounded to the nearest even number).
    """
    if width < 2:
        raise ValueError("width must be >= 2")
    info = probe(video_path)
    frame = _decode_frame_at(video_path, info.duration_seconds / 2)
    if frame is None:
        raise ValueError(f"{os.fspath(video_path)}: no decodable video frames")
    out_w = _even(width)
    out_h = _even(out_w * frame.height / frame.width)
    return _write_bytes_atomic(png_path, encode_png(video_frame_to_rgb(frame, out_w, out_h)))


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
        with _open_input(path) as container:
            if not _is_mp4(container):
                return False
            stream = _video_stream(container)
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
        last = _decode_last_frame(path)
        if last is None:
            return False
        if duration and tb and rate and last.pts is not None:
            frame_ticks = 1 / (Fraction(rate) * tb)
            if last.pts + Fraction(5, 2) * frame_ticks < start + duration:
                return False
        return True
    except _DECODE_ERRORS:
        return False


# ------------------------------------------------------------------------------------------------- join


@dataclass(frozen=True)
class JoinResult:
    """Outcome of :func:`join_clips`."""

    path: Path
    remuxed: bool
    duration_seconds: float


@dataclass(frozen=True)
class _ClipSignature:
    video_codec: str
    width: int
    height: int
    pix_fmt: str | None
    time_base: Fraction
    video_extradata: bytes
    audio: tuple[str, int, int, Fraction, bytes] | None  # codec, rate, channels, time base, extradata


def _signature(container: InputContainer) -> _ClipSignature:
    v = _video_stream(container)
    ctx = v.codec_context
    audio_sig = None
    if container.streams.audio:
        a: AudioStream = container.streams.audio[0]
        actx = a.codec_context
        audio_sig = (
            actx.name,
            int(actx.sample_rate),
            int(actx.channels),
            Fraction(a.time_base),
            bytes(actx.extradata or b""),
        )
    return _ClipSignature(
        video_codec=ctx.name,
        width=ctx.width,
        height=ctx.height,
        pix_fmt=ctx.format.name if ctx.format is not None else None,
        time_base=Fraction(v.time_base),
        video_extradata=bytes(ctx.extradata or b""),
        audio=audio_sig,
    )


def join_clips(paths: Sequence[StrPath], out_path: StrPath) -> JoinResult:
    """Concatenate clips into ``out_path`` (written atomically), each clip starting where the previous ends.

    Stream copy (no re-encode, ``remuxed=True``) when every clip has the same video codec, size, pixel format,
    time base and codec configuration (extradata), and either all or none have a compatible audio track.
    Otherwise everything is re-encoded with libx264 (yuv420p, crf 18) and AAC at the first clip's size
    (letter/pillar-boxed when aspect ratios differ) and frame rate; clips without audio get silence.
    """
    if not paths:
        raise ValueError("join_clips needs at least one clip")
    sources = [Path(os.fspath(p)) for p in paths]
    infos = [probe(p) for p in sources]
    signatures = []
    for src in sources:
        with _open_input(src) as container:
            signatures.append(_signature(container))
    remux = all(sig == signatures[0] for sig in signatures)
    dest = Path(os.fspath(out_path))
    with atomic_output(dest) as tmp:
        if remux:
            _remux(sources, tmp, _mp4_format(dest))
        else:
            _reencode(sources, infos, tmp, _mp4_format(dest))
    duration = probe(dest).duration_seconds
    return JoinResult(path=dest, remuxed=remux, duration_seconds=duration)


def _timing(path: Path) -> _StreamTiming:
    with _open_input(path) as container:
        return _video_timing(container, _video_stream(container))


def _remux(sources: Sequence[Path], tmp: Path, fmt: str) -> None:
    timings = [_timing(src) for src in sources]
    with av.open(os.fspath(tmp), mode="w", format=fmt) as out:
        out_v = None
        out_a = None
        clip_start = 0  # output timestamp where the next clip starts, in the (shared) video time base
        last_v_dts: int | None = None
        last_a_dts: int | None = None
        for index, (src, timing) in enumerate(zip(sources, timings, strict=True)):
            with _open_input(src) as container:
                v = _video_stream(container)
                a = container.streams.audio[0] if container.streams.audio else None
                if out_v is None:
                    out_v = out.add_stream_from_template(v)
                    if a is not None:
                        out_a = out.add_stream_from_template(a)
                v_shift: int | None = None
                a_shift = 0
                a_start = 0
                if a is not None:
                    a_start = a.start_time or 0
                    a_shift = round(clip_start * timing.time_base / a.time_base) - a_start
                streams = [v] if a is None else [v, a]
                for packet in container.demux(*streams):
                    if packet.size == 0 or packet.dts is None:
                        continue
                    if packet.stream.type == "video":
                        if v_shift is None:
                            # First packet (lowest dts) of this clip: keep dts strictly increasing across seams.
                            v_shift = clip_start - timing.start
                            if last_v_dts is not None and packet.dts + v_shift <= last_v_dts:
                                v_shift += last_v_dts + 1 - (packet.dts + v_shift)
                        packet.dts += v_shift
                        if packet.pts is not None:
                            packet.pts += v_shift
                        last_v_dts = packet.dts
                        packet.stream = out_v
                    else:
                        pts = packet.pts if packet.pts is not None else packet.dts
                        if index > 0 and pts < a_start:
                            continue  # encoder priming of a later clip: there is no place for it mid-track
                        new_dts = packet.dts + a_shift
                        if last_a_dts is not None and new_dts <= last_a_dts:
                            continue  # would overlap the previous clip's audio
                        packet.dts = new_dts
                        if packet.pts is not None:
                            packet.pts += a_shift
                        last_a_dts = new_dts
                        packet.stream = out_a
                    out.mux(packet)
                if v_shift is not None:
                    clip_start = v_shift + timing.start
                clip_start += timing.duration


class _AudioSink:
    """Feeds planar float samples to an AAC encoder in fixed-size frames with exact sample-count timestamps."""

    def __init__(self, out: OutputContainer, stream: AudioStream, layout: str, rate: int) -> None:
        self.out = out
        self.stream = stream
        self.layout = layout
        self.rate = rate
        self.channels = 2 if layout == "stereo" else 1
        self.frame_size = 1024  # AAC-LC frame size
        self.pending: list[np.ndarray] = []
        self.pending_len = 0
        self.emitted = 0  # samples handed to the encoder
        self.accepted = 0  # samples accepted so far (emitted + pending)

    def push(self, samples: np.ndarray, limit: int) -> None:
        """Queue ``samples`` (channels x n float32), dropping whatever goes past ``limit`` total samples."""
        room = limit - self.accepted
        if room <= 0 or samples.shape[1] == 0:
            return
        samples = samples[:, :room]
        self.pending.append(samples)
        self.pending_len += samples.shape[1]
        self.accepted += samples.shape[1]
        self._drain(final=False)

    def pad_to(self, total: int) -> None:
        """Append silence until ``total`` samples have been accepted."""
        missing = total - self.accepted
        if missing > 0:
            self.push(np.zeros((self.channels, missing), dtype=np.float32), total)

    def close(self) -> None:
        self._drain(final=True)
        self.out.mux(self.stream.encode(None))

    def _drain(self, final: bool) -> None:
        if self.pending_len < self.frame_size and not (final and self.pending_len):
            return
        buf = np.concatenate(self.pending, axis=1) if len(self.pending) > 1 else self.pending[0]
        pos = 0
        while buf.shape[1] - pos >= self.frame_size or (final and pos < buf.shape[1]):
            chunk = np.ascontiguousarray(buf[:, pos : pos + self.frame_size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self.layout)
            frame.sample_rate = self.rate
            frame.pts = self.emitted
            frame.time_base = Fraction(1, self.rate)
            self.out.mux(self.stream.encode(frame))
            self.emitted += chunk.shape[1]
            pos += chunk.shape[1]
        rest = buf[:, pos:]
        self.pending = [rest] if rest.shape[1] else []
        self.pending_len = rest.shape[1]


def _fit_frame(frame: VideoFrame, width: int, height: int) -> VideoFrame:
    """Scale ``frame`` to ``width`` x ``height`` yuv420p (BT.601), letterboxing if the aspect ratio differs."""
    same_aspect = abs((frame.width / frame.height) / (width / height) - 1) < 0.01
    if same_aspect:
        return frame.reformat(
            width=width,
            height=height,
            format="yuv420p",
            dst_colorspace=Colorspace.ITU601,
            dst_color_range=ColorRange.MPEG,
            interpolation=_SCALE_INTERPOLATION,
        )
    scale = min(width / frame.width, height / frame.height)
    fit_w = min(width, _even(frame.width * scale))
    fit_h = min(height, _even(frame.height * scale))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    y0 = (height - fit_h) // 2
    x0 = (width - fit_w) // 2
    canvas[y0 : y0 + fit_h, x0 : x0 + fit_w] = video_frame_to_rgb(frame, fit_w, fit_h)
    return rgb_to_video_frame(canvas)


def _reencode(sources: Sequence[Path], infos: Sequence[VideoInfo], tmp: Path, fmt: str) -> None:
    first = infos[0]
    width, height = _even(first.width), _even(first.height)
    with _open_input(sources[0]) as container:
        v0 = _video_stream(container)
        out_tb = Fraction(v0.time_base)
        fps = _stream_fps(v0, _video_timing(container, v0)) or Fraction(24)
    audio_params: tuple[int, str] | None = None
    for src, info in zip(sources, infos, strict=True):
        if info.has_audio:
            with _open_input(src) as container:
                actx = container.streams.audio[0].codec_context
                audio_params = (int(actx.sample_rate), "stereo" if actx.channels >= 2 else "mono")
            break

    with av.open(os.fspath(tmp), mode="w", format=fmt) as out:
        out_v = out.add_stream("libx264", rate=fps.limit_denominator(1_000_000))
        out_v.width = width
        out_v.height = height
        out_v.pix_fmt = "yuv420p"
        out_v.time_base = out_tb
        out_v.codec_context.time_base = out_tb
        out_v.options = {"crf": "18", "preset": "veryfast", "x264-params": "mbtree=0"}  # mbtree: not repeatable
        tag_bt601(out_v)
        sink: _AudioSink | None = None
        if audio_params is not None:
            rate, layout = audio_params
            out_a = out.add_stream("aac", rate=rate)
            out_a.layout = layout
            out_a.bit_rate = 96_000 * (2 if layout == "stereo" else 1)  # FFmpeg's mono default is ~69 kb/s
            sink = _AudioSink(out, out_a, layout, rate)

        held: list[av.Packet] = []  # the newest video packet, held back so the last one can get a duration
        first_dts: list[int] = []

        def mux_video(packets: list[av.Packet]) -> None:
            for packet in packets:
                if not first_dts and packet.dts is not None:
                    first_dts.append(packet.dts)
                if held:
                    out.mux(held.pop())
                held.append(packet)

        offset = Fraction(0)  # seconds
        last_pts: int | None = None
        for src, info in zip(sources, infos, strict=True):
            clip_end = offset + Fraction(info.duration_seconds)
            end_ticks = round(clip_end / out_tb)
            with _open_input(src) as container:
                v = _video_stream(container)
                v_tb = Fraction(v.time_base)
                v_start = v.start_time or 0
                a = container.streams.audio[0] if (container.streams.audio and sink is not None) else None
                resampler = (
                    av.AudioResampler(format="fltp", layout=sink.layout, rate=sink.rate)
                    if a is not None and sink is not None
                    else None
                )
                sample_limit = round(clip_end * sink.rate) if sink is not None else 0
                streams = [v] if a is None else [v, a]
                for packet in container.demux(*streams):
                    for frame in packet.decode():
                        if isinstance(frame, VideoFrame):
                            rel = (frame.pts - v_start) * v_tb if frame.pts is not None else None
                            pts = round((offset + rel) / out_tb) if rel is not None else (last_pts or -1) + 1
                            if last_pts is not None and pts <= last_pts:
                                pts = last_pts + 1
                            if pts >= end_ticks:
                                continue
                            out_frame = _fit_frame(frame, width, height)
                            out_frame.pts = pts
                            out_frame.time_base = out_tb
                            last_pts = pts
                            mux_video(out_v.encode(out_frame))
                        elif resampler is not None and sink is not None:
                            for rf in resampler.resample(frame):
                                sink.push(rf.to_ndarray().astype(np.float32, copy=False), sample_limit)
                if resampler is not None and sink is not None:
                    for rf in resampler.resample(None):
                        sink.push(rf.to_ndarray().astype(np.float32, copy=False), sample_limit)
            if sink is not None:
                sink.pad_to(sample_limit)
            offset = clip_end
        mux_video(out_v.encode(None))
        if held:
            # The muxer sizes the track as last dts + last duration - first dts; make that the joined length.
            last = held.pop()
            if last.dts is not None and first_dts:
                last.duration = max(1, round(offset / out_tb) + first_dts[0] - last.dts)
            out.mux(last)
        if sink is not None:
            sink.close()
