"""Tokenisation throughput and memory of ``gated-attention data prepare``, measured side by side.

    python benchmarks/tokenize_throughput.py                 # ~5 minutes on 2 cores
    python benchmarks/tokenize_throughput.py --acceptance    # 1 GB corpus (tens of minutes)

1. **Throughput, interleaved.** On one generated text file (``--sample-mb``), each round runs,
   in a rotated order, ``tokenizers``' own ``encode_batch`` over the same documents held in
   memory (one process, the library's default threading) and ``prepare_shards`` (the code behind
   ``data prepare``: read, encode, write shards) with each ``--workers`` count. Every
   measurement is a fresh child process; the medians over ``--rounds`` rounds and their ratios
   are printed, so machine load affects all modes alike.
2. **Memory at scale.** One ``prepare_shards`` run with the most workers over a generated corpus
   of ``--big-mb`` (several files), while the parent samples the resident memory of the whole
   process tree: the peak of the summed PSS (shared pages counted once) and of the summed RSS
   (shared pages counted in every process), beside the corpus size. Holding the corpus in RAM
   as Python strings alone would take more than its size.

Acceptance (issue: 2 cores, a 1 GB corpus): peak memory under 2 GB and multi-worker throughput
at least 1.6x the single-process one; ``--acceptance`` sets ``--big-mb 1024 --sample-mb 64``.
The corpus is Zipf-distributed words from a generated 30,000-word lexicon
(:func:`gated_attention.data.write_text_corpus`); the tokenizer is our 8,192-token BPE trained on
its first 16 MB, or ``--tokenizer``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


# ----------------------------------------------------------------------------- children
def child_encode(args: argparse.Namespace) -> dict:
    """``encode_batch`` of the tokenizers library over the sample's documents (in memory)."""
    from tokenizers import Tokenizer

    from gated_attention.data import iter_documents

    docs = list(iter_documents(args.inputs[0]))
    tok = Tokenizer.from_file(str(Path(args.tokenizer) / "tokenizer.json"))
    cpu, start = _cpu(), time.perf_counter()
    tokens = 0
    for i in range(0, len(docs), 1024):
        for enc in tok.encode_batch(docs[i : i + 1024], add_special_tokens=False):
            tokens += len(enc.ids)
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": seconds, "cpu": _cpu()[0] - cpu[0]}


def child_prepare(args: argparse.Namespace) -> dict:
    from gated_attention.data import prepare_shards

    cpu, start = _cpu(), time.perf_counter()
    shards = prepare_shards(
        args.inputs, args.out, args.tokenizer, workers=args.workers[0], force=True
    )
    seconds = time.perf_counter() - start
    main_cpu, workers_cpu = (b - a for a, b in zip(cpu, _cpu()))
    return {
        "tokens": shards.num_tokens,
        "seconds": seconds,
        "shards": shards.num_shards,
        "cpu": main_cpu + workers_cpu,
        "cpu_main": main_cpu,
    }


def _cpu() -> tuple[float, float]:
    """CPU seconds (user + system) of this process (all threads) and of its reaped children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


# ----------------------------------------------------------------------------- memory sampling
def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def _memory_kb(pid: int) -> tuple[int, int]:
    """``(rss, pss)`` of one process in kB (0, 0 when it is gone)."""
    try:
        rss = pss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
        return rss, pss
    except (OSError, ValueError):
        return 0, 0


def run_child(argv: list[str], sample_memory: bool, env: dict | None = None) -> dict:
    """Run this script as a child; return its JSON result, plus memory peaks when sampled."""
    proc = subprocess.Popen(
        [sys.executable, __file__, *argv],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    peak = {"rss_kb": 0, "pss_kb": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            mem = [_memory_kb(p) for p in _tree(proc.pid)]
            peak["rss_kb"] = max(peak["rss_kb"], sum(m[0] for m in mem))
            peak["pss_kb"] = max(peak["pss_kb"], sum(m[1] for m in mem))

    sampler = threading.Thread(target=sample, daemon=True)
    if sample_memory:
        sampler.start()
    out, _ = proc.communicate()
    stop.set()
    if proc.returncode:
        raise SystemExit(f"child {' '.join(argv)} failed with exit status {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    if sample_memory:
        sampler.join()
        result.update(peak)
    return result


# ----------------------------------------------------------------------------- main
def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["encode", "prepare"], help=argparse.SUPPRESS)
    parser.add_argument("--inputs", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--sample-mb", type=int, default=32, help="throughput sample size")
    parser.add_argument("--big-mb", type=int, default=256, help="memory-run corpus size")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokenizer", help="tokenizer.json directory (default: train a BPE)")
    parser.add_argument("--workdir", help="where to write the corpus (default: a temp dir)")
    parser.add_argument("--acceptance", action="store_true", help="1 GB corpus, 64 MB sample")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.child:
        result = child_encode(args) if args.child == "encode" else child_prepare(args)
        print(json.dumps(result))
        return
    if args.acceptance:
        args.big_mb, args.sample_mb = 1024, 64

    from gated_attention.data import iter_documents, train_tokenizer, write_text_corpus

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tokenize-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"corpus and shards in {work}; {os.cpu_count()} cores visible, "
        f"{len(os.sched_getaffinity(0))} usable; absolute speeds depend on machine load"
    )
    # The big corpus is several files; the sample is the first of them (or a prefix of it).
    part_mb = min(256, args.big_mb)
    parts = []
    for i in range(-(-args.big_mb // part_mb)):
        path = work / f"corpus-{i:02d}.txt"
        if not path.is_file():
            write_text_corpus(path, part_mb * 2**20, seed=i)
        parts.append(path)
    sample = work / "sample.txt"
    if not sample.is_file():
        write_text_corpus(sample, args.sample_mb * 2**20, seed=0)
    tokenizer = Path(args.tokenizer) if args.tokenizer else work / "bpe"
    if not (tokenizer / "tokenizer.json").is_file():
        head = work / "head.txt"
        write_text_corpus(head, 16 * 2**20, seed=99)
        start = time.perf_counter()
        train_tokenizer(iter_documents(head), 8192, out_dir=tokenizer)
        print(f"trained an 8192-token BPE on 16 MB in {time.perf_counter() - start:.0f} s")

    # 1. throughput, interleaved
    modes = ["encode_batch", "encode_batch 1t"] + [f"prepare w={w}" for w in args.workers]
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpus: dict[str, list[float]] = {m: [] for m in modes}
    tokens: dict[str, int] = {}
    for r in range(args.rounds):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        for mode in order:
            env = None
            if mode.startswith("encode_batch"):
                argv = ["--child", "encode", "--inputs", str(sample), "--tokenizer", str(tokenizer)]
                env = {"TOKENIZERS_PARALLELISM": "false"} if mode.endswith("1t") else None
            else:
                w = mode.split("=")[1]
                argv = [
                    "--child",
                    "prepare",
                    "--inputs",
                    str(sample),
                    "--tokenizer",
                    str(tokenizer),
                    "--workers",
                    w,
                    "--out",
                    str(work / f"shards-{w}"),
                ]
            res = run_child(argv, sample_memory=False, env=env)
            times[mode].append(res["seconds"])
            cpus[mode].append(res["cpu"] / res["tokens"] * 1e6)
            tokens[mode] = res["tokens"]
            print(f"  round {r + 1}: {mode:14s} {res['tokens'] / res['seconds']:>12,.0f} tokens/s")
    rate = {m: tokens[m] / statistics.median(times[m]) for m in modes}
    single = rate.get("prepare w=1")
    print(
        f"\nthroughput on {_mb(sample.stat().st_size)} of text, median of {args.rounds} "
        "interleaved rounds:"
    )
    print(
        "(encode_batch: the tokenizers library in one process with its default threads; "
        "1t: one thread)"
    )
    cpu_per_m = {m: statistics.median(cpus[m]) for m in modes}
    header = f"{'mode':16s} {'tokens/s':>12s} {'vs encode_batch':>16s} {'vs 1 worker':>12s}"
    print(f"{header} {'CPU s / M tokens':>17s}")
    for m in modes:
        vs_single = f"{rate[m] / single:.2f}x" if single and m.startswith("prepare") else "-"
        print(
            f"{m:16s} {rate[m]:>12,.0f} {rate[m] / rate['encode_batch']:>15.2f}x "
            f"{vs_single:>12s} {cpu_per_m[m]:>17.2f}"
        )
    print(
        "(CPU s / M tokens: user + system time of every process and thread per million tokens, "
        "which machine load inflates little; similar values mean the workers add little work)"
    )

    # 2. memory at scale
    most = max(args.workers)
    corpus_bytes = sum(p.stat().st_size for p in parts)
    res = run_child(
        [
            "--child",
            "prepare",
            "--inputs",
            *map(str, parts),
            "--tokenizer",
            str(tokenizer),
            "--workers",
            str(most),
            "--out",
            str(work / "shards-big"),
        ],
        sample_memory=True,
    )
    shutil.rmtree(work / "shards-big", ignore_errors=True)
    print(
        f"\nmemory: prepare_shards with {most} workers over {_mb(corpus_bytes)} of text "
        f"({len(parts)} files): {res['tokens']:,} tokens in {res['shards']} shards, "
        f"{res['seconds']:.0f} s ({res['tokens'] / res['seconds']:,.0f} tokens/s; CPU "
        f"{res['cpu']:.0f} s, of which the reading and writing process {res['cpu_main']:.0f} s)"
    )
    print(
        f"  peak memory of the process tree: PSS {_mb(res['pss_kb'] * 1024)}, "
        f"RSS summed over processes {_mb(res['rss_kb'] * 1024)} "
        f"(corpus {_mb(corpus_bytes)}: peak PSS is {res['pss_kb'] * 1024 / corpus_bytes:.2f}x)"
    )
    summary = {
        "sample_bytes": sample.stat().st_size,
        "rounds": args.rounds,
        "tokens_per_s": rate,
        "ratio_vs_encode_batch": {m: rate[m] / rate["encode_batch"] for m in modes},
        "ratio_vs_single": {m: rate[m] / single for m in modes if single},
        "cpu_s_per_million_tokens": cpu_per_m,
        "big": {"corpus_bytes": corpus_bytes, "workers": most, **res},
    }
    if args.acceptance:
        multi = rate.get(f"prepare w={most}", 0.0) / single if single else 0.0
        ok_mem = res["pss_kb"] * 1024 < 2 * 2**30
        print(
            f"\nacceptance: peak PSS {_mb(res['pss_kb'] * 1024)} < 2 GB: "
            f"{'yes' if ok_mem else 'NO'}; {most} workers {multi:.2f}x one process "
            f"(target >= 1.6x): {'yes' if multi >= 1.6 else 'NO'}"
        )
        summary["acceptance"] = {"peak_pss_under_2gb": ok_mem, "speedup": multi}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
