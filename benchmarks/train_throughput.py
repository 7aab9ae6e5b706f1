"""Training throughput (tokens/s) of gated and ungated models, measured side by side.

    python benchmarks/train_throughput.py [--steps 8] [--no-compile] [--preset small]

Every configuration (gate x dtype x eager/compiled) is built once, warmed up, then timed in
interleaved rounds (one step of each configuration per round) so machine drift affects all
alike; the median step time per configuration is reported with its ratio to the ungated model
of the same dtype and mode. Steps are full optimizer steps (forward, backward, AdamW).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from gated_attention import GatedLM, ModelConfig


def make_step(model: GatedLM, dtype: str, compiled: bool, batch: int, seq: int):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fwd = torch.compile(model) if compiled else model
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (batch, seq + 1), generator=gen)
    x, y = ids[:, :-1], ids[:, 1:]

    def step() -> None:
        ctx = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if dtype == "bfloat16"
            else contextlib.nullcontext()
        )
        with ctx:
            loss = fwd(x, targets=y).loss  # the trainer's chunked LM head + loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="model preset (cpu-small size)")
    parser.add_argument("--gates", nargs="+", default=["none", "sdpa-elementwise", "sdpa-headwise"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()

    modes = [False] if args.no_compile else [False, True]
    configs = []
    for compiled in modes:
        for dtype in ("float32", "bfloat16"):
            for gate in args.gates:
                torch.manual_seed(0)
                model = GatedLM(ModelConfig.from_preset(args.preset, gate=gate))
                step = make_step(model, dtype, compiled, args.batch, args.seq)
                configs.append(((gate, dtype, "compiled" if compiled else "eager"), step))
    for _, step in configs:
        for _ in range(args.warmup):
            step()
    times: dict[tuple[str, str, str], list[float]] = {key: [] for key, _ in configs}
    for _ in range(args.steps):
        for key, step in configs:
            t0 = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t0)
    tokens = args.batch * args.seq
    print(
        f"# training throughput, preset {args.preset}, batch {args.batch} x seq {args.seq}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of "
        f"{args.steps} interleaved steps"
    )
    print(f"{'gate':<22}{'dtype':<10}{'mode':<10}{'tokens/s':>10}{'vs none':>9}")
    for (gate, dtype, mode), ts in times.items():
        med = statistics.median(ts)
        base = (
            statistics.median(times[("none", dtype, mode)])
            if ("none", dtype, mode) in times
            else med
        )
        print(f"{gate:<22}{dtype:<10}{mode:<10}{tokens / med:>10.0f}{base / med:>9.3f}")


if __name__ == "__main__":
    main()
