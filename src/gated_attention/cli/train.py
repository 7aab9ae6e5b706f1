"""``gated-attention train --config FILE [--set key=value ...] [--resume]``."""

from __future__ import annotations

import argparse
import json

from gated_attention.train.config import load_run_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML run config (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.lr=1e-3 --set model.gate=sdpa-headwise",
    )
    parser.add_argument("--out", help="run directory (overrides out_dir)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest valid checkpoint"
    )
    parser.add_argument(
        "--allow-changed",
        action="append",
        default=[],
        metavar="KEY",
        help="with --resume: accept this run-config key (e.g. train.steps, or a whole section "
        "such as data) differing from the checkpoint's (repeatable)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run every code path of the config on the CPU for a few steps at reduced size "
        "(dtype, compile, DDP/FSDP2 wrapping, checkpointing, data, checkpoint and resume); "
        "writes to --out or a temporary directory",
    )
    parser.add_argument(
        "--dry-run-compile",
        default="aot_eager",
        choices=("aot_eager", "inductor"),
        help="torch.compile backend of a dry run of a compiled config (default aot_eager: the "
        "same graph capture without generating CPU kernels)",
    )


def run(args: argparse.Namespace) -> int:
    from gated_attention.train.trainer import TrainingDiverged, train

    overrides = list(args.overrides)
    if args.dry_run:
        from gated_attention.train.dryrun import dry_run

        cfg = load_run_config(args.config, overrides)
        if args.out:
            from gated_attention.train.lock import check_writable

            check_writable(args.out)
        print(json.dumps(dry_run(cfg, args.out, args.dry_run_compile), indent=1))
        return 0
    if args.out:
        overrides.append(f'out_dir="{args.out}"')
    cfg = load_run_config(args.config, overrides)
    if args.allow_changed and not args.resume:
        raise ValueError("--allow-changed goes with --resume")
    try:
        result = train(cfg, resume=args.resume, allow_changed=tuple(args.allow_changed))
    except TrainingDiverged as err:
        raise ValueError(str(err)) from None
    if result.out_dir.exists():
        print(json.dumps(result.to_dict(), indent=1))
    return 0
