"""zf-overlap: the ImageNet training images that are near-duplicates of transfer-set images, to leave out.

    zf-overlap IMAGENET_ROOT TRANSFER_ROOT... --out FILE [--threshold 32] [--workers N] [--batch-size 64]

Writes FILE (the ImageNet training files to leave out, one path a line relative to IMAGENET_ROOT, sorted) and
FILE with suffix .csv (every pair found: imagenet_path, transfer_path, distance); then train without them with
`zf-train data=imagenet data.root=IMAGENET_ROOT data.exclude=FILE`. Exit status 0 when done (unreadable images
are warned about and listed, not fatal); 2 for bad arguments (a missing root, a root without the expected
layout), before any image is read. The hash, threshold and speed: `zf_lightning.data.overlap`.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import TextIO

from zf_lightning.cli.arguments import ArgumentParser

EXIT_USAGE = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from zf_lightning.data.overlap import DEFAULT_THRESHOLD, HASH_BITS

    parser = ArgumentParser(
        prog="zf-overlap",
        description="Find the ImageNet training images that are near-duplicates (resized, re-encoded, cropped by "
        "up to 5%) of images under the transfer roots, with a perceptual (DCT) hash, and list them for "
        "data.exclude.",
    )
    parser.add_argument("imagenet_root", help="the ImageNet root, with train/<wnid>/*.JPEG")
    parser.add_argument(
        "transfer_roots",
        nargs="+",
        metavar="transfer_root",
        help="folders of transfer images, searched recursively (e.g. <data>/caltech101 <data>/caltech256)",
    )
    parser.add_argument(
        "--out", required=True, help="the list to write (the pairs go beside it, with suffix .csv), e.g. overlap.txt"
    )
    parser.add_argument(
        "--threshold",
        type=int,
        default=DEFAULT_THRESHOLD,
        help=f"largest Hamming distance (of {HASH_BITS} bits) of a duplicate (default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="loader workers (default: all CPUs)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per loader batch (default 64)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, only what was written")
    return parser.parse_args(argv)


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """One line per warning (an unreadable image), without the source line Python would add."""
    print(f"zf-overlap: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        return run(args)


def run(args: argparse.Namespace) -> int:
    from zf_lightning.data.overlap import HASH_BITS, find_overlap, pairs_path, write_overlap
    from zf_lightning.utils.errors import UserError

    try:
        pairs_path(args.out)  # a bad --out fails now, not after the whole pass
        overlap = find_overlap(
            args.imagenet_root,
            args.transfer_roots,
            threshold=args.threshold,
            workers=args.workers,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
        listed, pairs = write_overlap(overlap, args.out)
    except UserError as error:
        print(f"zf-overlap: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    matched = len({transfer for _, transfer, _ in overlap.pairs})
    print(
        f"zf-overlap: wrote {listed} ({len(overlap.duplicates)} of {overlap.imagenet_images} ImageNet training "
        f"images to leave out: near-duplicates of {matched} of {overlap.transfer_images} transfer images) and "
        f"{pairs} ({len(overlap.pairs)} pair(s) within {overlap.threshold} of {HASH_BITS} bits)"
    )
    for files, what in ((overlap.unreadable, "unreadable"), (overlap.uniform, "uniform (nothing to hash)")):
        if files:
            shown = "\n  ".join(files[:20]) + ("\n  ..." if len(files) > 20 else "")
            print(f"zf-overlap: {len(files)} {what} images skipped:\n  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
