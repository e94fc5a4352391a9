"""What the benchmarks comparing an export with fp32 PyTorch on real clips share (`export_agreement.py`,
`int8_unsure_band.py`, `int8_edges.py`): their options, and the export, model and clips those options name."""

from __future__ import annotations

import argparse
from pathlib import Path


def parser(description: str, out: str) -> argparse.ArgumentParser:
    """The shared options; a script adds its own before parsing."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="an `mvos export` folder")
    parser.add_argument("--clip", action="append", required=True, metavar="VIDEO:MASK",
                        help="a video (file or frames folder) and its first-frame mask; repeatable")
    parser.add_argument("--weights", default=None, help="the checkpoint the export was made from (default: shipped)")
    parser.add_argument("--queue-len", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(out))
    return parser


def export_and_model(args: argparse.Namespace):
    """(manifest, PyTorch model of the export's weights), torch on --threads threads."""
    import torch

    from mvos.export.verify import exported_model

    torch.set_num_threads(args.threads)
    return exported_model(args.model_dir, args.weights)


def clips(args: argparse.Namespace):
    """Each --clip read whole, named after its video."""
    from mvos.export.calibrate import read_clip, video_and_mask

    for text in args.clip:
        video, mask = video_and_mask(text, "--clip")
        clip = read_clip(video, mask)
        clip.name = video.stem
        yield clip
