"""torchrun worker for ``test_checkpointing.py``: a float64 GatedLM under FSDP2 trained a few
steps with each activation-checkpointing mode; rank 0 writes the losses and full weights."""

from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist

from gated_attention import GatedLM, ModelConfig
from gated_attention.model import CHECKPOINTING
from gated_attention.nn.hooks import in_recompute
from gated_attention.train import distributed as dist_utils
from gated_attention.train.config import DistributedConfig


def main(out: str) -> None:
    info = dist_utils.setup(DistributedConfig(strategy="fsdp"), torch.device("cpu"))
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny", gate="sdpa-elementwise", vocab_size=61)
    base = GatedLM(cfg).double()
    results = {}
    for mode in CHECKPOINTING:
        model = copy.deepcopy(base)
        model.set_checkpointing(mode)
        recomputed: list[int] = []

        def count(*_args, sink: list[int] = recomputed) -> None:
            if in_recompute():
                sink.append(1)

        model.layers[0].self_attn.hook_gate.register_forward_hook(count)
        dist_utils.wrap(model, info, torch.device("cpu"))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(3)
        losses = []
        for _ in range(3):
            ids = torch.randint(0, 61, (4, 17), generator=gen)[2 * info.rank : 2 * info.rank + 2]
            loss = model(ids, targets=ids.roll(-1, 1)).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(dist_utils.all_reduce_mean(loss.detach(), info))
        state = {k: v.full_tensor() for k, v in model.state_dict().items()}
        results[mode] = {
            "losses": torch.stack(losses),
            "state": state,
            "recomputed": len(recomputed),
        }
    if info.is_main:
        torch.save(results, out)
    dist.barrier()
    dist_utils.teardown()


if __name__ == "__main__":
    main(sys.argv[1])
