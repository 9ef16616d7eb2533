"""loopline.io: reading recorded frames from files (shared by analysis, daemon and simulator),
and the run folder's tables (:mod:`.runfolder`, written by ``analyze`` and ``serve`` alike)."""

from .frames import (
    DM_SUFFIXES,
    EMD_SUFFIXES,
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    VIDEO_SUFFIXES,
    FrameFile,
    as_gray,
    image_files,
    natural_key,
    open_frames,
    pixel_size_from_file,
    read_image,
    series_id,
)

__all__ = [
    "DM_SUFFIXES",
    "EMD_SUFFIXES",
    "IMAGE_SUFFIXES",
    "TIFF_SUFFIXES",
    "VIDEO_SUFFIXES",
    "FrameFile",
    "as_gray",
    "image_files",
    "natural_key",
    "open_frames",
    "pixel_size_from_file",
    "read_image",
    "series_id",
]
