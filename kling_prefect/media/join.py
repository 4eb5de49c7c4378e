"""Joining clips into one video: :func:`join_clips` and its :class:`JoinResult`.

Clips that share codec, size and codec configuration (every clip from one Kling model and mode does) are joined
by stream copy: no re-encode, each seam frame decodes exactly as in its own clip. Anything else is re-encoded
once with libx264 and AAC at the first clip's size.

Examples:
    ```python
    from kling_prefect.media import join_clips

    result = join_clips(["clip-01.mp4", "clip-02.mp4"], "final.mp4")
    result.remuxed, result.duration_seconds  # (True, 10.0)
    ```
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.video.frame import VideoFrame
from av.video.reformatter import ColorRange, Colorspace, Interpolation
from av.video.stream import VideoStream

from kling_prefect.atomic import atomic_path
from kling_prefect.media._container import (
    StreamTiming,
    StrPath,
    even,
    mp4_format,
    open_input,
    stream_fps,
    time_base,
    video_stream,
    video_timing,
)
from kling_prefect.media.frames import rgb_to_video_frame, tag_bt601, video_frame_to_rgb
from kling_prefect.media.probe import VideoInfo, probe

__all__ = ["JoinResult", "join_clips"]

_SCALE_INTERPOLATION = Interpolation.BICUBIC | Interpolation.ACCURATE_RND


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
    v = video_stream(container)
    ctx = v.codec_context
    audio_sig = None
    if container.streams.audio:
        a: AudioStream = container.streams.audio[0]
        actx = a.codec_context
        audio_sig = (
            actx.name,
            int(actx.sample_rate),
            int(actx.channels),
            time_base(a),
            bytes(actx.extradata or b""),
        )
    return _ClipSignature(
        video_codec=ctx.name,
        width=ctx.width,
        height=ctx.height,
        pix_fmt=ctx.format.name if ctx.format is not None else None,
        time_base=time_base(v),
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
        with open_input(src) as container:
            signatures.append(_signature(container))
    remux = all(sig == signatures[0] for sig in signatures)
    dest = Path(os.fspath(out_path))
    with atomic_path(dest) as tmp:
        if remux:
            _remux(sources, tmp, mp4_format(dest))
        else:
            _reencode(sources, infos, tmp, mp4_format(dest))
    duration = probe(dest).duration_seconds
    return JoinResult(path=dest, remuxed=remux, duration_seconds=duration)


def _timing(path: Path) -> StreamTiming:
    with open_input(path) as container:
        return video_timing(container, video_stream(container))


def _remux(sources: Sequence[Path], tmp: Path, fmt: str) -> None:
    timings = [_timing(src) for src in sources]
    with av.open(os.fspath(tmp), mode="w", format=fmt) as out:
        out_v = None
        out_a = None
        clip_start = 0  # output timestamp where the next clip starts, in the (shared) video time base
        last_v_dts: int | None = None
        last_a_dts: int | None = None
        for index, (src, timing) in enumerate(zip(sources, timings, strict=True)):
            with open_input(src) as container:
                v = video_stream(container)
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
                    a_shift = round(clip_start * timing.time_base / time_base(a)) - a_start
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
                        if out_a is None:  # not reached: remux only joins clips that all have audio or all not
                            raise ValueError(f"{src}: audio where the first clip has none")
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
    fit_w = min(width, even(frame.width * scale))
    fit_h = min(height, even(frame.height * scale))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    y0 = (height - fit_h) // 2
    x0 = (width - fit_w) // 2
    canvas[y0 : y0 + fit_h, x0 : x0 + fit_w] = video_frame_to_rgb(frame, fit_w, fit_h)
    return rgb_to_video_frame(canvas)


def _reencode(sources: Sequence[Path], infos: Sequence[VideoInfo], tmp: Path, fmt: str) -> None:
    first = infos[0]
    width, height = even(first.width), even(first.height)
    with open_input(sources[0]) as container:
        v0 = video_stream(container)
        out_tb = time_base(v0)
        fps = stream_fps(v0, video_timing(container, v0)) or Fraction(24)
    audio_params: tuple[int, str] | None = None
    for src, info in zip(sources, infos, strict=True):
        if info.has_audio:
            with open_input(src) as container:
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

        held: list[av.Packet[VideoStream]] = []  # the newest video packet, held back so the last one can get a duration
        first_dts: list[int] = []

        def mux_video(packets: list[av.Packet[VideoStream]]) -> None:
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
            with open_input(src) as container:
                v = video_stream(container)
                v_tb = time_base(v)
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
                        elif isinstance(frame, AudioFrame) and resampler is not None and sink is not None:
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
