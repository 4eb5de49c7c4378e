"""Media helpers on local files, built on PyAV (which bundles FFmpeg) and numpy.

- :mod:`.probe`: what a video is (:func:`probe`) and whether it is whole (:func:`is_decodable_mp4`).
- :mod:`.frames`: frames and pictures: :func:`read_frame`, :func:`frame_at`, :func:`load_image`, PNG/JPEG encoding,
  thumbnails, filmstrips and seam strips (as ``data:`` URIs the Prefect UI renders), :func:`mean_abs_diff`.
- :mod:`.join`: :func:`join_clips`.

Every function that writes a file writes it through :func:`kling_prefect.atomic.atomic_path`, so readers never
see half of it.

Examples:
    ```python
    from kling_prefect import media

    media.probe("clip-01.mp4").duration_seconds  # 5.0
    media.extract_last_frame("clip-01.mp4", "clip-01.last.png")  # the next clip's first frame
    media.join_clips(["clip-01.mp4", "clip-02.mp4"], "final.mp4").remuxed  # True
    ```
"""

from kling_prefect.media._container import StrPath
from kling_prefect.media.frames import (
    ImageFormat,
    ImageInfo,
    decode_image,
    encode_jpeg,
    encode_png,
    extract_last_frame,
    filmstrip,
    filmstrip_data_uri,
    frame_at,
    jpeg_data_uri,
    load_image,
    make_thumbnail,
    mean_abs_diff,
    read_frame,
    resize_rgb,
    seam_strip,
    side_by_side,
    thumbnail,
    thumbnail_data_uri,
    thumbnails,
    video_frame_to_rgb,
)
from kling_prefect.media.join import JoinResult, join_clips
from kling_prefect.media.probe import (
    ASPECT_RATIOS,
    VideoInfo,
    aspect_ratio_name,
    is_decodable_mp4,
    nearest_aspect_ratio,
    probe,
)

__all__ = [
    "ASPECT_RATIOS",
    "ImageFormat",
    "ImageInfo",
    "JoinResult",
    "StrPath",
    "VideoInfo",
    "aspect_ratio_name",
    "decode_image",
    "encode_jpeg",
    "encode_png",
    "extract_last_frame",
    "filmstrip",
    "filmstrip_data_uri",
    "frame_at",
    "is_decodable_mp4",
    "join_clips",
    "jpeg_data_uri",
    "load_image",
    "make_thumbnail",
    "mean_abs_diff",
    "nearest_aspect_ratio",
    "probe",
    "read_frame",
    "resize_rgb",
    "seam_strip",
    "side_by_side",
    "thumbnail",
    "thumbnail_data_uri",
    "thumbnails",
    "video_frame_to_rgb",
]
