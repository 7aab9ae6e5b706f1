"""Cost of the training-time sink probe (``analysis.training.SinkProbe``) relative to training.

    python benchmarks/probe_cost.py [--every 50] [--rounds 5] [--seq 256] [--gate none]

On one model and one batch shape (the cpu-small preset at bf16 autocast by default), times a
training step (forward, backward, AdamW) and one probe measurement in interleaved rounds (one
step, then one probe, per round) so machine drift affects both alike, and prints the median of
each and the probe's share of a run at the given interval: ``probe / (every * step + probe)``.
The probe is a no-grad float32 forward of ``--probe-batch`` sequences plus the analysis (attention
recomputed from q/k per layer, a second forward on the first 64 tokens).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gated_attention import GatedLM, ModelConfig, lm_loss
from gated_attention.analysis.training import probe_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--gate", default="none")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--probe-batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--every", type=int, default=50, help="probe interval in steps")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(args.preset, gate=args.gate, max_position_embeddings=1024)
    model = GatedLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1))
    probe_ids = ids[: args.probe_batch, : args.seq]

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            loss = lm_loss(model(ids[:, :-1]).logits, ids[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def probe() -> None:
        probe_metrics(model, probe_ids)
        model.train()

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    step(), probe()  # warm-up
    steps, probes = [], []
    for _ in range(args.rounds):
        steps.append(timed(step))
        probes.append(timed(probe))
    s, p = statistics.median(steps), statistics.median(probes)
    share = p / (args.every * s + p)
    print(
        f"{args.preset} gate={args.gate} {args.dtype} batch {args.batch}x{args.seq}, probe "
        f"batch {args.probe_batch}, torch threads {torch.get_num_threads()}"
    )
    print(f"training step {s * 1e3:.1f} ms (median of {args.rounds})")
    print(f"probe         {p * 1e3:.1f} ms = {p / s:.2f} steps")
    print(f"probe share of a run at every={args.every}: {share:.2%}")


if __name__ == "__main__":
    main()
