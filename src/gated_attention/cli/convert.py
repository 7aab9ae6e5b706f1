"""``gated-attention convert``: import a foreign checkpoint (``--from FORMAT``) into our
``transformers`` format, or export one of ours (``--to FORMAT``). Formats: ``paper`` (the paper's
released models), ``qwen3``, ``qwen3-moe``, ``qwen3-next``; see ``gated_attention.hf.convert``.

Examples::

    gated-attention convert --from paper ./1B_gate_elementwise ./ga-1b-elementwise
    gated-attention convert --to qwen3-next ./my-model ./my-model-qwen3next
"""

from __future__ import annotations

import argparse
import dataclasses

FORMATS = (
    "paper",
    "qwen3",
    "qwen3-moe",
    "qwen3-next",
)  # kept in sync with convert.FORMATS by a test


def add_arguments(parser: argparse.ArgumentParser) -> None:
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--from",
        dest="from_format",
        choices=FORMATS,
        metavar="FORMAT",
        help=f"import a FORMAT checkpoint into ours ({', '.join(FORMATS)})",
    )
    direction.add_argument(
        "--to",
        dest="to_format",
        choices=FORMATS,
        metavar="FORMAT",
        help=f"export one of our checkpoints to FORMAT ({', '.join(FORMATS)})",
    )
    parser.add_argument("src", help="source checkpoint directory")
    parser.add_argument("dst", help="destination directory (created; must be empty)")
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty destination"
    )


def run(args: argparse.Namespace) -> int:
    # Imported here: the converters need transformers, which --help should not pay for.
    from gated_attention.hf.convert import export_checkpoint, import_checkpoint
    from gated_attention.train.lock import check_writable

    check_writable(args.dst, "destination")

    if args.from_format is not None:
        config = import_checkpoint(args.from_format, args.src, args.dst, overwrite=args.overwrite)
        gate = config.to_model_config().gate
        name = dataclasses.replace(gate, fp32=True).name or str(gate.to_dict())
        dtype_note = "" if gate.fp32 or not gate.enabled else ", sigmoid in the model dtype"
        print(
            f"imported {args.from_format} checkpoint {args.src} -> {args.dst} "
            f"(gate: {name}{dtype_note})"
        )
    else:
        export_checkpoint(args.to_format, args.src, args.dst, overwrite=args.overwrite)
        print(f"exported {args.src} -> {args.to_format} checkpoint {args.dst}")
    return 0
