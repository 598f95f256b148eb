"""zf-prepare: write a short-side-256 copy of an image tree (ImageNet layout or any folders of images).

    zf-prepare SRC DST [--size 256] [--workers N] [--quality 95]

Then train on the copy with `zf-train data=imagenet data.root=DST`. Running again resumes (files already in
DST are skipped). Exit status 0 when done (unreadable files are listed, not fatal); 2 for bad arguments
(missing SRC, DST equal to, inside or containing SRC), before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys

from zf_lightning.cli.arguments import ArgumentParser

EXIT_USAGE = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="zf-prepare",
        description="Write a copy of an image tree with every image's short side resized to --size (never upscaled), "
        "same relative paths, so that training decodes smaller files. Resumable.",
    )
    parser.add_argument(
        "src", help="the image tree, e.g. an ImageNet root with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"
    )
    parser.add_argument("dst", help="where the copy goes (created; must not be inside SRC)")
    parser.add_argument("--size", type=int, default=256, help="short side of the copy (default 256, the paper's)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of resized images (default 95)")
    parser.add_argument("--quiet", action="store_true", help="no progress line, only the final count")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from zf_lightning.data.prepare import BAD_IMAGE_LOG, PrepareError, prepare

    args = parse_args(argv)
    try:
        counts = prepare(
            args.src, args.dst, size=args.size, workers=args.workers, quality=args.quality, progress=not args.quiet
        )
    except PrepareError as error:
        print(f"zf-prepare: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"zf-prepare: done, {counts.line()} -> {args.dst}")
    if counts.bad:
        shown = "\n  ".join(counts.bad_files[:20]) + ("\n  ..." if counts.bad > 20 else "")
        print(
            f"zf-prepare: {counts.bad} unreadable files not copied (listed in "
            f"{os.path.join(args.dst, BAD_IMAGE_LOG)}):\n  {shown}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
