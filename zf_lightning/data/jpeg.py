"""What a JPEG file's header says (frame type, precision, size, components), read without decoding it, and a
file's bytes kept whole for decoding on the training device (`data.decode=gpu`)."""

from __future__ import annotations

from typing import NamedTuple

import torch

# Frame markers nvJPEG's batched decoder takes: baseline and extended sequential Huffman (progressive and
# lossless frames are decoded in the worker).
DEVICE_FRAMES = (0xC0, 0xC1)
_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-15; C4, C8, CC are other segments
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length


class JpegFrame(NamedTuple):
    marker: int
    precision: int
    height: int
    width: int
    components: int


def jpeg_frame(data: bytes | bytearray) -> JpegFrame | None:
    """The frame header of a whole JPEG (SOI at the start, EOI at the end), or None for anything else."""
    if len(data) < 4 or data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker in _FRAME_MARKERS:
            if length < 8 or position + 10 > len(data):
                return None
            header = data[position + 4 : position + 10]
            return JpegFrame(
                marker, header[0], int.from_bytes(header[1:3], "big"), int.from_bytes(header[3:5], "big"), header[5]
            )
        if marker == 0xDA:  # start of scan before any frame header
            return None
        position += 2 + length
    return None


class EncodedJPEG(NamedTuple):
    """A JPEG file's bytes (a 1-D uint8 tensor), to be decoded on the device."""

    data: torch.Tensor
    path: str
