"""``gated-attention lm-eval``: run EleutherAI's lm-evaluation-harness on one of our checkpoints.

The harness's ``hf`` model loads checkpoints through ``transformers``' Auto classes; importing
``gated_attention.hf`` first registers our ``model_type``, so a directory written by
``save_pretrained`` (or ``gated-attention convert``) loads without ``trust_remote_code``. The
tasks are any the harness knows plus the bundled offline smoke tasks in ``lm_eval_tasks/`` (local
JSONL data, one task per request type):

- ``ga_smoke_choice``: multiple choice by log-likelihood (``acc``, ``acc_norm``);
- ``ga_smoke_rolling``: whole-document perplexity (``loglikelihood_rolling``);
- ``ga_smoke_generate``: greedy short answers (``generate_until``, ``exact_match``);
- ``ga_smoke``: the group of all three (the default).

Examples::

    gated-attention lm-eval ./my-model
    gated-attention lm-eval ./my-model --tasks hellaswag,arc_easy --batch-size 8 --device cuda
    gated-attention lm-eval ./my-model --include-path ./my_tasks --tasks my_task --output r.json

Needs the ``lm-eval`` package (in the ``dev`` extras): ``pip install 'lm-eval[hf]'``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).resolve().parents[1] / "hf" / "lm_eval_tasks"
"""The bundled task YAMLs (passed to the harness as an include path)."""

DEFAULT_TASKS = "ga_smoke"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint directory (config.json, weights, tokenizer)")
    parser.add_argument(
        "--tasks",
        default=DEFAULT_TASKS,
        help=f"comma-separated task or group names (default: {DEFAULT_TASKS}, the bundled set)",
    )
    parser.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="extra folder of task YAMLs (repeatable; the bundled tasks are always included)",
    )
    parser.add_argument("--batch-size", default="1", help="an integer, or 'auto' (default: 1)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--dtype", default="float32", help="weights dtype: float32, bfloat16, float16 or auto"
    )
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples")
    parser.add_argument(
        "--limit", type=float, default=None, help="documents per task (a fraction if < 1)"
    )
    parser.add_argument(
        "--model-args",
        default="",
        metavar="K=V,...",
        help="extra arguments for the harness's hf model (e.g. max_length=2048,add_bos_token=True)",
    )
    parser.add_argument(
        "--bootstrap-iters",
        type=int,
        default=100_000,
        help="bootstrap iterations for standard errors (0: skip them)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (python, numpy, torch)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--log-samples", action="store_true", help="also store every request and response"
    )


def _model_args(args: argparse.Namespace) -> dict[str, Any]:
    from lm_eval.utils import simple_parse_args_string

    if not (Path(args.model) / "config.json").is_file():
        raise FileNotFoundError(f"{args.model} is not a checkpoint directory (no config.json)")
    model_args: dict[str, Any] = {
        "pretrained": str(args.model),
        "dtype": args.dtype,
        # Ours is a decoder-only LM; saying so skips the harness's guess from in-tree model lists
        # (which do not name our model type).
        "backend": "causal",
    }
    model_args.update(simple_parse_args_string(args.model_args))
    return model_args


def _task_manager(tasks: list[str], include: list[Path]) -> Any:
    """A harness task index over ``include``; the harness's own ~200 task folders are indexed
    too only when a requested name is not found in ``include`` (indexing them takes seconds)."""
    from lm_eval.tasks import TaskManager

    for path in include:
        if not path.is_dir():
            raise FileNotFoundError(f"task folder {path} does not exist")
    paths = [str(p) for p in include]
    manager = TaskManager(include_path=paths, include_defaults=False)
    known = {*manager.all_tasks, *manager.all_groups, *manager.all_tags}
    if all(task in known for task in tasks):
        return manager
    manager = TaskManager(include_path=paths)
    known = {*manager.all_tasks, *manager.all_groups, *manager.all_tags}
    unknown = [task for task in tasks if task not in known]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(known), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"--tasks: unknown task {', '.join(map(repr, unknown))}; list them with "
            f"`lm-eval ls tasks` or add a folder with --include-path.{hint}"
        )
    return manager


DTYPES = ("float32", "bfloat16", "float16", "auto")


def _check_args(args: argparse.Namespace) -> None:
    """Refuse bad arguments, a broken checkpoint and an unusable ``--output`` before any
    work (the harness would fail after minutes, or after the results were computed)."""
    from gated_attention.train.checkpoint import check_safetensors
    from gated_attention.train.config import resolve_device
    from gated_attention.train.lock import check_writable

    if args.dtype not in DTYPES:
        raise ValueError(f"--dtype {args.dtype!r} is not valid; allowed: {', '.join(DTYPES)}")
    resolve_device(args.device, "--device")
    model = Path(args.model)
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"{args.model} is not a checkpoint directory (no config.json)")
    from gated_attention.cli.analyze import HF_TOKENIZER_FILES

    if "tokenizer=" not in args.model_args and not any(
        (model / f).exists() for f in HF_TOKENIZER_FILES
    ):
        raise ValueError(
            f"{model} has no tokenizer ({', '.join(HF_TOKENIZER_FILES)}); copy the model's "
            "tokenizer files into it, or pass --model-args tokenizer=DIR"
        )
    check_safetensors(model)
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be > 0, got {args.limit}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ValueError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.output is not None:
        check_writable(args.output, "--output", file=True)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the harness as ``args`` say and return its results dict (``samples`` included when
    ``args.log_samples``)."""
    from lm_eval import simple_evaluate

    # Registers model_type "gated_attention" with AutoConfig / AutoModelForCausalLM.
    import gated_attention.hf  # noqa: F401

    _check_args(args)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError("--tasks is empty; name at least one task or group")
    batch_size: int | str = args.batch_size
    if batch_size != "auto" and not str(batch_size).startswith("auto:"):
        try:
            batch_size = int(batch_size)
        except ValueError:
            raise ValueError(
                f"--batch-size must be an integer or 'auto', got {batch_size!r}"
            ) from None
    manager = _task_manager(tasks, [TASKS_DIR, *map(Path, args.include_path)])
    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    results = simple_evaluate(
        model="hf",
        model_args=_model_args(args),
        tasks=tasks,
        num_fewshot=args.num_fewshot,
        batch_size=batch_size,
        device=args.device,
        limit=limit,
        bootstrap_iters=args.bootstrap_iters,
        log_samples=args.log_samples,
        task_manager=manager,
        random_seed=args.seed,
        numpy_random_seed=args.seed,
        torch_random_seed=args.seed,
        fewshot_random_seed=args.seed,
    )
    if results is None:  # only non-zero ranks of a distributed run get None
        return {}
    return results


def run(args: argparse.Namespace) -> int:
    from lm_eval.utils import handle_non_serializable, make_table

    results = evaluate(args)
    if not results:
        return 0
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
        args.output.write_text(text + "\n", encoding="utf-8")
        print(f"results written to {args.output}")
    return 0
