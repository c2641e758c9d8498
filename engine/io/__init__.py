"""Media I/O: source portraits in, driving clips in, result videos out."""

from engine.io.image import (
    MAX_SOURCE_PIXELS,
    MIN_SOURCE_SIDE,
    check_input_file,
    load_image,
    read_rgb,
    side_by_side,
    square_crop_box,
)
from engine.io.video import (
    VideoClip,
    VideoInfo,
    check_output_path,
    fit_square,
    iter_video_frames,
    probe_video,
    read_video,
    write_video,
)

__all__ = [
    "MAX_SOURCE_PIXELS",
    "MIN_SOURCE_SIDE",
    "VideoClip",
    "VideoInfo",
    "check_input_file",
    "check_output_path",
    "fit_square",
    "iter_video_frames",
    "load_image",
    "read_rgb",
    "probe_video",
    "read_video",
    "side_by_side",
    "square_crop_box",
    "write_video",
]
