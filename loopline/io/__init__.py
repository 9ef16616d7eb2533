"""loopline.io: reading recorded frames from files (shared by analysis, daemon and simulator)."""

from .frames import (
    DM_SUFFIXES,
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
)

__all__ = [
    "DM_SUFFIXES",
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
]
