"""Pixel codecs of the DECTRIS streams: bitshuffle+LZ4 (``bslz4``) and LZ4, both directions.

Decoders validate the compressed layout *before* handing it to a C library, so that a
corrupt or hostile buffer raises :class:`MalformedMessage` instead of reading out of bounds
(``bshuf_decompress_lz4`` is not told the input length).

``bslz4`` layout (HDF5 bitshuffle filter, DECTRIS Stream v1 ``bsNN-lz4`` and v2 ``bslz4``)::

    uint64 BE  uncompressed size in bytes (0 = unknown; libertem-dectris's mock writes 0)
    uint32 BE  block size in bytes (0 = bitshuffle's default)
    blocks     each: uint32 BE compressed size, then that many bytes of LZ4
    tail       the last (n_elements % 8) elements, raw

The Stream v2 ``lz4`` layout is the HDF5 LZ4 filter's: the same 12-byte header, then blocks of
uint32 BE compressed size + LZ4 data (a block whose compressed size equals its raw size is
stored raw). Stream v1 ``lz4<`` is one bare LZ4 block.
"""

from __future__ import annotations

import numpy as np

from ..protocol import MalformedMessage

__all__ = ["bslz4_decode", "bslz4_encode", "lz4_block_decode", "lz4_framed_decode"]

_TARGET_BLOCK_BYTES = 8192  # bitshuffle's BSHUF_TARGET_BLOCK_SIZE_B
_EXTRA = "install the daemon extra: pip install 'loopline[daemon]'"


def _default_block_elems(itemsize: int) -> int:
    # bshuf_default_block_size: 8 KiB of elements, a multiple of 8, at least 128
    return max((_TARGET_BLOCK_BYTES // itemsize) // 8 * 8, 128)


def _header(buf: memoryview, expected: int, what: str) -> int:
    if buf.nbytes < 12:
        raise MalformedMessage(f"{what}: expected at least 12 bytes (header), got {buf.nbytes}")
    total = int.from_bytes(buf[0:8], "big")
    block = int.from_bytes(buf[8:12], "big")
    if total not in (0, expected):
        raise MalformedMessage(
            f"{what}: expected {expected} uncompressed bytes for the stated shape and type, "
            f"header says {total}"
        )
    return block


def _check_blocks(buf: memoryview, n_blocks: int, tail: int, what: str) -> None:
    off = 12
    size = buf.nbytes
    for i in range(n_blocks):
        if off + 4 > size:
            raise MalformedMessage(f"{what}: truncated: block {i + 1} of {n_blocks} missing "
                                   f"({size} bytes)")  # fmt: skip
        off += 4 + int.from_bytes(buf[off : off + 4], "big")
        if off > size:
            raise MalformedMessage(f"{what}: truncated: block {i + 1} of {n_blocks} needs "
                                   f"{off} bytes, got {size}")  # fmt: skip
    if off + tail != size:
        raise MalformedMessage(f"{what}: expected {off + tail} bytes, got {size}")


def bslz4_decode(data, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Decode a bitshuffle+LZ4 buffer (with its 12-byte header) into an array of ``shape``."""
    dtype = np.dtype(dtype)
    buf = memoryview(data).cast("B")
    n = int(np.prod(shape))
    isz = dtype.itemsize
    block_bytes = _header(buf, n * isz, "bslz4")
    if block_bytes % isz or (block_bytes // isz) % 8:
        raise MalformedMessage(f"bslz4: expected a block size that is a multiple of 8 elements, "
                               f"got {block_bytes} bytes")  # fmt: skip
    block = block_bytes // isz or _default_block_elems(isz)
    full, rem = divmod(n, block)
    _check_blocks(buf, full + (1 if rem >= 8 else 0), (rem % 8) * isz, "bslz4")
    try:
        import bitshuffle
    except ImportError:
        bitshuffle = None
    if bitshuffle is not None:
        try:
            out = bitshuffle.decompress_lz4(np.frombuffer(buf[12:], np.uint8), tuple(shape),
                                            dtype, block)  # fmt: skip
        except (ValueError, RuntimeError) as e:
            raise MalformedMessage(f"bslz4: corrupt data ({e})") from None
        return out
    try:
        from dectris.compression import decompress
    except ImportError:
        raise ImportError(f"decoding bslz4 needs bitshuffle or dectris-compression; "
                          f"{_EXTRA}") from None  # fmt: skip
    if int.from_bytes(buf[0:8], "big") == 0:  # dectris-compression needs the size
        raw = bytes(buf)
        buf = memoryview((n * isz).to_bytes(8, "big") + raw[8:])
    try:
        out_b = decompress(buf.tobytes(), "bslz4", elem_size=isz)
    except Exception as e:  # its errors are plain RuntimeError/ValueError
        raise MalformedMessage(f"bslz4: corrupt data ({e})") from None
    if len(out_b) != n * isz:
        raise MalformedMessage(f"bslz4: expected {n * isz} bytes out, got {len(out_b)}")
    return np.frombuffer(out_b, dtype=dtype).reshape(shape)


def bslz4_encode(image: np.ndarray) -> bytes:
    """Bitshuffle+LZ4 ``image`` with the 12-byte header (the default block size)."""
    import bitshuffle

    a = np.ascontiguousarray(image)
    block = _default_block_elems(a.dtype.itemsize)
    body = bitshuffle.compress_lz4(a.reshape(-1), block).tobytes()
    return a.nbytes.to_bytes(8, "big") + (block * a.dtype.itemsize).to_bytes(4, "big") + body


def lz4_block_decode(data, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Decode one bare LZ4 block (DECTRIS Stream v1 ``lz4<``)."""
    import lz4.block

    dtype = np.dtype(dtype)
    expected = int(np.prod(shape)) * dtype.itemsize
    try:
        raw = lz4.block.decompress(bytes(data), uncompressed_size=expected)
    except (lz4.block.LZ4BlockError, ValueError) as e:
        raise MalformedMessage(f"lz4: corrupt data ({e})") from None
    if len(raw) != expected:
        raise MalformedMessage(f"lz4: expected {expected} bytes out, got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def lz4_block_encode(image: np.ndarray) -> bytes:
    import lz4.block

    return lz4.block.compress(np.ascontiguousarray(image).tobytes(), store_size=False)


def lz4_framed_decode(data, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Decode the HDF5-LZ4-framed layout (DECTRIS Stream v2 ``lz4``)."""
    import lz4.block

    dtype = np.dtype(dtype)
    buf = memoryview(data).cast("B")
    expected = int(np.prod(shape)) * dtype.itemsize
    block = _header(buf, expected, "lz4") or expected
    n_blocks = -(-expected // block) if expected else 0
    _check_blocks(buf, n_blocks, 0, "lz4")
    out = bytearray()
    off = 12
    for i in range(n_blocks):
        raw_size = min(block, expected - i * block)
        csize = int.from_bytes(buf[off : off + 4], "big")
        chunk = buf[off + 4 : off + 4 + csize]
        off += 4 + csize
        if csize == raw_size:
            out += chunk
            continue
        try:
            out += lz4.block.decompress(chunk.tobytes(), uncompressed_size=raw_size)
        except (lz4.block.LZ4BlockError, ValueError) as e:
            raise MalformedMessage(f"lz4: corrupt block {i + 1} ({e})") from None
    if len(out) != expected:
        raise MalformedMessage(f"lz4: expected {expected} bytes out, got {len(out)}")
    return np.frombuffer(bytes(out), dtype=dtype).reshape(shape)
