"""Pixel codecs of the DECTRIS streams: bitshuffle+LZ4 (``bslz4``) and LZ4, both directions.

One library: ``lz4`` (python-lz4, LZ4 blocks). The bit transposition of bitshuffle is done
here in NumPy (an 8x8 bit-matrix transpose on 64-bit words, checked bit for bit against the
bitshuffle library and DECTRIS's ``dectris-compression`` in the tests), so neither of those
(nor the Cython/h5py that bitshuffle pulls) is needed to receive a DECTRIS stream. Decoders
validate the compressed layout before decompressing, so that a corrupt or hostile buffer
raises :class:`MalformedMessage`; each LZ4 block is told its exact output size.

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

from ..loopline1.protocol import MalformedMessage

__all__ = ["bslz4_decode", "bslz4_encode", "lz4_block_decode", "lz4_framed_decode"]

_TARGET_BLOCK_BYTES = 8192  # bitshuffle's BSHUF_TARGET_BLOCK_SIZE_B
_EXTRA = "install the daemon extra: pip install 'loopline[daemon]'"
# 8x8 bit-matrix transpose of a 64-bit word whose byte r is row r (bit c = column c)
_T8 = tuple((np.uint64(s), np.uint64(m)) for s, m in (
    (7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0)))


def _lz4():
    try:
        import lz4.block
    except ImportError:
        raise ImportError(f"DECTRIS bslz4/lz4 frames need the lz4 package; {_EXTRA}") from None
    return lz4.block


def _default_block_elems(itemsize: int) -> int:
    # bshuf_default_block_size: 8 KiB of elements, a multiple of 8, at least 128
    return max((_TARGET_BLOCK_BYTES // itemsize) // 8 * 8, 128)


def _t8(x: np.ndarray) -> np.ndarray:
    for s, m in _T8:
        t = (x ^ (x >> s)) & m
        x = x ^ t ^ (t << s)
    return x


def _bitshuffle(raw: np.ndarray, itemsize: int) -> np.ndarray:
    """Bitshuffle ``raw`` (uint8, blocks x block elements x itemsize, block % 8 == 0).

    Shape (nb, n * itemsize) in, same shape out: per block, bit plane (byte b, bit i) of
    every element, n / 8 bytes each, element j at bit j % 8 (bitshuffle's layout).
    """
    nb, nbytes = raw.shape
    n8 = nbytes // itemsize // 8
    a = np.ascontiguousarray(raw.reshape(nb, n8, 8, itemsize).transpose(0, 3, 1, 2))
    w = _t8(a.view("<u8").reshape(nb, itemsize, n8))
    return np.ascontiguousarray(w.view(np.uint8).reshape(nb, itemsize, n8, 8)
                                .transpose(0, 1, 3, 2)).reshape(nb, nbytes)  # fmt: skip


def _bitunshuffle(planes: np.ndarray, itemsize: int) -> np.ndarray:
    """The inverse of :func:`_bitshuffle` (same shapes)."""
    nb, nbytes = planes.shape
    n8 = nbytes // itemsize // 8
    a = np.ascontiguousarray(planes.reshape(nb, itemsize, 8, n8).transpose(0, 1, 3, 2))
    w = _t8(a.view("<u8").reshape(nb, itemsize, n8))
    return np.ascontiguousarray(w.view(np.uint8).reshape(nb, itemsize, n8, 8)
                                .transpose(0, 2, 3, 1)).reshape(nb, nbytes)  # fmt: skip


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


def _check_blocks(buf: memoryview, n_blocks: int, tail: int, what: str) -> list[tuple[int, int]]:
    """(offset, size) of each compressed block; raises unless the layout fills ``buf``."""
    off = 12
    size = buf.nbytes
    spans = []
    for i in range(n_blocks):
        if off + 4 > size:
            raise MalformedMessage(f"{what}: truncated: block {i + 1} of {n_blocks} missing "
                                   f"({size} bytes)")  # fmt: skip
        c = int.from_bytes(buf[off : off + 4], "big")
        spans.append((off + 4, c))
        off += 4 + c
        if off > size:
            raise MalformedMessage(f"{what}: truncated: block {i + 1} of {n_blocks} needs "
                                   f"{off} bytes, got {size}")  # fmt: skip
    if off + tail != size:
        raise MalformedMessage(f"{what}: expected {off + tail} bytes, got {size}")
    return spans


def _unlz4(block, chunk: memoryview, raw_size: int, what: str) -> bytes:
    try:
        out = block.decompress(chunk, uncompressed_size=raw_size)
    except (block.LZ4BlockError, ValueError) as e:
        raise MalformedMessage(f"{what}: corrupt data ({e})") from None
    if len(out) != raw_size:
        raise MalformedMessage(f"{what}: expected {raw_size} bytes out, got {len(out)}")
    return out


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
    last = rem - rem % 8  # a last, shorter block; the final rem % 8 elements are stored raw
    spans = _check_blocks(buf, full + (1 if last else 0), (rem % 8) * isz, "bslz4")
    lz4 = _lz4()
    out = np.empty(n * isz, np.uint8)
    nbytes = block * isz
    if full:
        planes = np.empty((full, nbytes), np.uint8)
        for i, (off, c) in enumerate(spans[:full]):
            planes[i] = np.frombuffer(_unlz4(lz4, buf[off : off + c], nbytes, "bslz4"),
                                      np.uint8)  # fmt: skip
        out[: full * nbytes] = _bitunshuffle(planes, isz).reshape(-1)
    pos = full * nbytes
    if last:
        off, c = spans[full]
        raw = _unlz4(lz4, buf[off : off + c], last * isz, "bslz4")
        out[pos : pos + last * isz] = _bitunshuffle(np.frombuffer(raw, np.uint8)[None],
                                                    isz).reshape(-1)  # fmt: skip
        pos += last * isz
    if pos < out.size:
        out[pos:] = np.frombuffer(buf[buf.nbytes - (out.size - pos) :], np.uint8)
    return out.view(dtype).reshape(shape)


def bslz4_encode(image: np.ndarray) -> bytes:
    """Bitshuffle+LZ4 ``image`` with the 12-byte header (the default block size)."""
    lz4 = _lz4()
    a = np.ascontiguousarray(image)
    isz = a.dtype.itemsize
    raw = a.reshape(-1).view(np.uint8)
    block = _default_block_elems(isz)
    full, rem = divmod(a.size, block)
    last = rem - rem % 8
    parts = [a.nbytes.to_bytes(8, "big"), (block * isz).to_bytes(4, "big")]
    pieces = []
    if full:
        pieces += list(_bitshuffle(raw[: full * block * isz].reshape(full, -1), isz))
    if last:
        pieces.append(_bitshuffle(raw[full * block * isz : (full * block + last) * isz][None],
                                  isz)[0])  # fmt: skip
    for p in pieces:
        c = lz4.compress(p.tobytes(), store_size=False)
        parts += [len(c).to_bytes(4, "big"), c]
    parts.append(raw[(full * block + last) * isz :].tobytes())
    return b"".join(parts)


def lz4_block_decode(data, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Decode one bare LZ4 block (DECTRIS Stream v1 ``lz4<``)."""
    dtype = np.dtype(dtype)
    expected = int(np.prod(shape)) * dtype.itemsize
    raw = _unlz4(_lz4(), memoryview(data).cast("B"), expected, "lz4")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def lz4_block_encode(image: np.ndarray) -> bytes:
    return _lz4().compress(np.ascontiguousarray(image).tobytes(), store_size=False)


def lz4_framed_decode(data, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Decode the HDF5-LZ4-framed layout (DECTRIS Stream v2 ``lz4``)."""
    dtype = np.dtype(dtype)
    buf = memoryview(data).cast("B")
    expected = int(np.prod(shape)) * dtype.itemsize
    block = _header(buf, expected, "lz4") or expected
    n_blocks = -(-expected // block) if expected else 0
    spans = _check_blocks(buf, n_blocks, 0, "lz4")
    lz4 = _lz4()
    out = bytearray()
    for i, (off, csize) in enumerate(spans):
        raw_size = min(block, expected - i * block)
        chunk = buf[off : off + csize]
        out += chunk if csize == raw_size else _unlz4(lz4, chunk, raw_size,
                                                     f"lz4 block {i + 1}")  # fmt: skip
    if len(out) != expected:
        raise MalformedMessage(f"lz4: expected {expected} bytes out, got {len(out)}")
    return np.frombuffer(bytes(out), dtype=dtype).reshape(shape)
