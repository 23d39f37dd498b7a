"""`cityseg-predict`: segments image files through a model server, writes mask PNGs.

    cityseg-predict --server localhost:8500 --model fastscnn_s4 street.png -o masks/

Talks gRPC by default (or REST with --rest) to cityseg-serve or tensorflow/serving.
"""
from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path
from typing import Sequence

from cityseg.cli import CliError, HelpFormatter, run_cli, setup_logging
from serving.client import GrpcClient, RestClient, ServingError

log = logging.getLogger("cityseg.predict")

EPILOG = """\
examples:
  cityseg-predict --server localhost:8500 --model fastscnn_s4 a.png b.png -o masks
  cityseg-predict --server localhost:8501 --rest --model unet --color frame.png
  cityseg-predict --server tfserving:8500 --model unet --version 2 --timeout 30 frame.jpg
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cityseg-predict", description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter, epilog=EPILOG)
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                        help="PNG or JPEG files")
    parser.add_argument("--server", required=True,
                        help="HOST:PORT of the gRPC (or, with --rest, REST) endpoint")
    parser.add_argument("--model", required=True, help="served model name")
    parser.add_argument("--version", type=int, help="model version (default: latest)")
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("."),
                        help="where {stem}_mask.png files are written")
    parser.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    parser.add_argument("--color", action="store_true",
                        help="write palette colours instead of category ids")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=2, help="retries when UNAVAILABLE")
    parser.add_argument("--batch-size", type=int, default=1, help="images per request")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def mask_path(output_dir: Path, image: Path, color: bool) -> Path:
    """Where the mask of `image` goes: `{stem}_mask.png` or `{stem}_color.png`."""
    return output_dir / f"{image.stem}_{'color' if color else 'mask'}.png"


def colorize_png(mask_png: bytes) -> bytes:
    """Re-encodes a category-id PNG in the category palette."""
    import numpy as np
    from PIL import Image

    from cityseg.images import palette_png

    with Image.open(io.BytesIO(mask_png)) as image:
        categories = np.asarray(image)
    if categories.ndim == 3:
        categories = categories[..., 0]
    return palette_png(categories)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.timeout <= 0:
        raise CliError(f"--timeout must be positive, not {args.timeout}")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, not {args.batch_size}")
    if args.version is not None and args.version <= 0:
        raise CliError(f"--version must be a positive integer, not {args.version}")
    payloads = []
    for path in args.images:
        if not path.is_file():
            raise CliError(f"no such image: {path}")
        payloads.append((path, path.read_bytes()))
    args.output_dir.mkdir(parents=True, exist_ok=True)

    if args.rest:
        client = RestClient(args.server, timeout_s=args.timeout, retries=args.retries)
    else:
        client = GrpcClient(args.server, timeout_s=args.timeout, retries=args.retries)
    try:
        with client:
            for start in range(0, len(payloads), args.batch_size):
                chunk = payloads[start:start + args.batch_size]
                prediction = client.predict([data for _, data in chunk], model=args.model,
                                            version=args.version)
                for (path, _), mask in zip(chunk, prediction.masks):
                    target = mask_path(args.output_dir, path, args.color)
                    target.write_bytes(colorize_png(mask) if args.color else mask)
                    log.info("%s -> %s (%s v%d)", path, target, prediction.model_name,
                             prediction.model_version)
    except ServingError as err:
        raise CliError(str(err)) from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("cityseg-predict", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
