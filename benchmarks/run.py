"""Performance suite: gate overhead, ours vs ``transformers``, training memory, attention backends.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--threads N] [--budget SECONDS]
                             [--only backends memory loss hf gates static normalizers moe scale]
                             [--tiny] [--no-save]

Every timing is the median of several repetitions after warm-up, measured in one process with
the compared cases interleaved (one call of each case per round, the starting case rotating), so
machine drift and background load affect all cases alike; ratios are of medians. Each section
declares its cases in a registry and checks them against a reference before timing them (the
correctness gate, ``STYLE.md`` rule 14): a case whose check fails is reported as ``FAIL`` and not
timed, so no speed-up is ever shown for a wrong path.

Sections:

``backends``  attention backends (``ops.attention``) fwd+bwd over T = 128..2048 in fp32 and bf16,
              each first checked against a float64 reference (forward and gradients, T = 63);
``memory``    training-step memory, gated vs ungated: saved-for-backward bytes (counted with
              ``torch.autograd.graph.saved_tensors_hooks``) plus parameter, gradient and AdamW
              bytes (on CUDA ``torch.cuda.max_memory_allocated``), and the bytes the gate itself
              saves;
``loss``      the LM head + cross entropy, plain (full logits) vs chunked (``ops.loss``): peak
              memory at a 151,669-token vocabulary and 8k tokens (CUDA: the allocator's peak;
              CPU: tracked on fake tensors, checked against a measured RSS at a smaller size)
              and fwd+bwd time at the cpu-small shape;
``gates``     training step (fwd+bwd+AdamW) and forward-only time of every named gate variant
              over ``none``, eager and ``torch.compile``, fp32 and bf16 autocast, beside the
              variant's analytic extra-FLOPs share;
``hf``        training and generation tokens/s of our model against ``transformers``'
              ``Qwen3ForCausalLM`` (gate none) and ``Qwen3NextForCausalLM`` (all full attention,
              dense MLP, elementwise output gate), built with identical weights by
              ``gated_attention.hf.convert``, each library with its own training loss; ours
              eager and compiled (``train.compile``);
``static``    decoding through our ``transformers`` class: ``generate(cache_implementation=
              "static")`` with ``transformers``' own ``torch.compile`` of the forward, beside
              our fast loop (``gated_attention.generation.generate``, compiled decoding step),
              both also eager, on the same weights;
``moe``       the price of running every expert in every step (DDP/FSDP2 need it) against
              skipping idle experts, small-moe fwd+bwd at micro-batches that leave experts idle;
``scale``     (CUDA, or ``--tiny`` on the CPU; ``benchmarks/gpu.sh``) training at the gpu-125m
              config: tokens/s and MFU against a bf16 matmul peak measured in the same run, of
              baseline, elementwise and headwise G1, eager and compiled, peak memory, and the
              baseline against transformers' Qwen3 with the same weights;
``normalizers`` forward+backward time and training-step memory of every attention normaliser
              (``ops/normalizers.py``) over softmax at the cpu-small shape, fp32 and bf16
              autocast, each first checked on its ``auto`` backend against the float64
              reference (forward and gradients, T = 63).

The compact ratio table is printed last; the full tables, the machine (platform, cores, torch
threads) and library versions are appended to ``benchmarks/RESULTS.md``. ``--quick`` runs fewer
lengths and variants and keeps to a time budget (skipped work is listed, never silently
dropped).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gated_attention import GateConfig, GatedLM, KVCache, ModelConfig, lm_loss
from gated_attention.generation import generate as fast_generate
from gated_attention.ops.attention import attention, select_backend
from gated_attention.ops.loss import linear_cross_entropy
from gated_attention.ops.normalizers import KINDS, Normalizer
from gated_attention.ops.reference import reference_attention

RESULTS = Path(__file__).with_name("RESULTS.md")

DTYPES = ("float32", "bfloat16")
HEADLINE_GATES = ("none", "sdpa-elementwise", "sdpa-headwise")


# ---------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Shape:
    """A training shape: the ``small`` preset at ``batch`` x ``seq`` tokens."""

    name: str
    batch: int
    seq: int


SMALL = Shape("small", 4, 128)
CPU_SMALL = Shape("cpu-small", 16, 128)  # configs/cpu-small.toml: preset small, 16 x 128, bf16


@dataclass
class Settings:
    """What one run measures; ``--quick`` shrinks it."""

    device: torch.device
    quick: bool
    warmup: int
    reps: int
    lengths: tuple[int, ...]
    gen_tokens: int
    compile_gates: tuple[str, ...] | None  # None: every variant
    compile_dtypes: tuple[str, ...]
    cpu_small_gates: tuple[str, ...] | None  # None: every variant
    budget: Budget
    tiny: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        device = torch.device(args.device)
        quick = args.quick
        budget = args.budget if args.budget is not None else (420.0 if quick else None)
        return cls(
            device=device,
            quick=quick,
            warmup=1 if quick else 2,
            reps=7 if quick else 11,
            lengths=(128, 256, 512) if quick else (128, 256, 512, 1024, 2048),
            gen_tokens=32 if quick else 128,
            compile_gates=HEADLINE_GATES if quick else None,
            # Quick runs compile the dtype cpu-small trains in; each compile costs ~30 s cold.
            compile_dtypes=("bfloat16",) if quick else DTYPES,
            cpu_small_gates=HEADLINE_GATES if quick else None,
            budget=Budget(budget),
            tiny=args.tiny,
        )


class Budget:
    """A wall-clock allowance; optional work asks :meth:`allows` before it starts."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()
        self.skipped: list[str] = []

    def left(self) -> float:
        if self.seconds is None:
            return math.inf
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, cost: float, what: str) -> bool:
        """True if ``cost`` seconds still fit; otherwise record ``what`` as skipped."""
        if self.left() >= cost:
            return True
        self.skipped.append(what)
        return False


# ---------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    cases: dict[str, Callable[[], Any]], warmup: int, reps: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each case: ``warmup`` untimed rounds, then ``reps`` timed rounds of
    one call per case, the starting case rotating every round (so no case always runs first)."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            t0 = time.perf_counter()
            cases[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median(ts: list[float]) -> float:
    return statistics.median(ts)


def autocast(dtype: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast as the trainer runs it (weights and optimizer stay float32)."""
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------- report
@dataclass
class Report:
    """Tables (markdown) for RESULTS.md and the compact ratio table printed last."""

    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    ratios: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, title: str, header: list[str], rows: list[list[Any]], note: str = "") -> None:
        lines = _markdown(header, rows)
        if note:
            lines += ["", note]
        self.sections.append((title, lines))
        print(f"\n## {title}")
        print("\n".join(lines), flush=True)

    def ratio(
        self, what: str, value: float, detail: str = "", goal: str = "", met: bool | None = None
    ) -> None:
        """One line of the final table: a ratio, what it compares, and a goal verdict."""
        verdict = "" if met is None else ("met" if met else "NOT met")
        self.ratios.append([what, f"{value:.3f}", detail, goal, verdict])

    def summary(self) -> list[str]:
        lines = _markdown(["measurement", "ratio", "detail", "goal", "verdict"], self.ratios)
        return lines + (["", *self.notes] if self.notes else [])


def _markdown(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        if x == 0 or 1e-3 <= abs(x) < 1e5:
            return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"
        return f"{x:.2e}"
    return str(x)


# ---------------------------------------------------------------------- models
def build(gate: str, device: torch.device, **overrides: Any) -> GatedLM:
    torch.manual_seed(0)
    return GatedLM(ModelConfig.from_preset("small", gate=gate, **overrides)).to(device)


def batch_for(shape: Shape, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and aligned next-token targets ``(batch, seq)`` (the trainer's batches)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (shape.batch, shape.seq + 1), generator=gen).to(device)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).logits


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(inputs, targets)``: one library's training loss for a batch."""


def ours_loss(model: Callable[..., Any]) -> Loss:
    """The trainer's loss (``Trainer._loss``): ``GatedLM(x, targets=y)``, LM head and cross
    entropy chunk by chunk (``ops.loss``), MoE losses added."""
    return lambda x, y: model(x, targets=y).loss


def hf_loss(model: Callable[..., Any]) -> Loss:
    """``transformers``' own causal-LM loss (``ForCausalLMLoss`` on full float32 logits) for
    the same aligned targets (``shift_labels``)."""
    return lambda x, y: model(input_ids=x, labels=y, shift_labels=y).loss


def train_step(
    model: torch.nn.Module,
    loss_fn: Loss,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    dtype: str,
) -> Callable[[], None]:
    """One trainer step: the loss under autocast, backward, AdamW."""

    def step() -> None:
        with autocast(dtype, x.device):
            loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def forward_only(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dtype: str
) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad(), autocast(dtype, x.device):
            forward(x)

    return run


def matmul_flops_per_token(cfg: ModelConfig, seq: int) -> tuple[float, float]:
    """Forward matmul FLOPs per token of a dense model ``(total, gate projection)``.

    Projections ``2 * in * out``; attention ``2 * 2 * H * D`` per visible key (logits and
    probabilities @ values), ``(seq + 1) / 2`` keys on average under the causal mask; LM head
    ``2 * hidden * vocab``. Elementwise work (norms, RoPE, the gate's sigmoid and product) is
    left out on purpose: a measured overhead above this share is that work.
    """
    h = cfg.hidden_size
    qkv = cfg.q_size + 2 * cfg.kv_size + cfg.gate_size
    layer = 2 * h * qkv + 2 * cfg.q_size * h + 2 * 3 * h * cfg.intermediate_size
    layer += 4 * cfg.num_attention_heads * cfg.head_dim * (seq + 1) / 2
    total = cfg.num_hidden_layers * layer + 2 * h * cfg.vocab_size
    gate = cfg.num_hidden_layers * 2 * h * cfg.gate_size
    return float(total), float(gate)


# ---------------------------------------------------------------------- section: backends
BACKENDS = ("sdpa", "sdpa_fp32", "matmul", "eager")
"""Attention backends benchmarked (``ops.attention``; ``auto`` is shown as its choice)."""

BACKEND_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2}
"""Largest max-abs error, relative to the output's / gradient's largest magnitude, that passes
the correctness gate (the unit tests in ``tests/ops/test_backends.py`` are stricter)."""


def _attention_inputs(
    B: int, T: int, H: int, K: int, D: int, device: torch.device, dtype: torch.dtype, seed: int
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(B, T, H, D), (B, T, K, D), (B, T, K, D)]
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(device, dtype) for s in shapes]


def backend_error(backend: str, dtype: str, device: torch.device) -> float:
    """Worst relative error of output and q/k/v gradients against float64 (T = 63, GQA 3:1)."""
    ref_in = _attention_inputs(2, 63, 6, 2, 16, device, torch.float64, 1)
    ref_in = [t.requires_grad_() for t in ref_in]
    grad_out = torch.randn(2, 63, 6, 16, dtype=torch.float64, device=device)
    ref = attention(*ref_in, backend="eager")
    ref_grads = torch.autograd.grad(ref, ref_in, grad_out)
    low = getattr(torch, dtype)
    ins = [t.detach().to(low).requires_grad_() for t in ref_in]
    with autocast(dtype, device):
        out = attention(*ins, backend=backend)
    grads = torch.autograd.grad(out, ins, grad_out.to(out.dtype))
    errs = [
        float((a.detach().double() - b.detach()).abs().max() / b.detach().abs().max())
        for a, b in zip((out, *grads), (ref, *ref_grads))
    ]
    return max(errs)


def section_backends(s: Settings, report: Report) -> None:
    H, K, D = 4, 2, 32  # the small preset's heads
    rows: list[list[Any]] = []
    best: dict[tuple[str, int], tuple[str, float, str, float]] = {}
    for dtype in DTYPES:
        ok = {}
        # On float32 inputs sdpa_fp32 is sdpa (no casts): timed in bf16 only.
        backends = [b for b in BACKENDS if not (dtype == "float32" and b == "sdpa_fp32")]
        for b in backends:
            err = backend_error(b, dtype, s.device)
            ok[b] = err <= BACKEND_TOLERANCE[dtype]
            rows.append([dtype, "check T=63", b, f"err {err:.1e}", "ok" if ok[b] else "FAIL"])
        for T in s.lengths:
            if not s.budget.allows(5, f"backends {dtype} T={T}"):
                continue
            B = max(1, 2048 // T)
            low = getattr(torch, dtype)
            q, k, v = (
                t.requires_grad_() for t in _attention_inputs(B, T, H, K, D, s.device, low, 0)
            )
            g = torch.randn_like(q)

            def run(name: str, q=q, k=k, v=v, g=g, dtype=dtype) -> Callable[[], None]:
                def fn() -> None:
                    with autocast(dtype, s.device):
                        out = attention(q, k, v, backend=name)
                    out.backward(g.to(out.dtype))

                return fn

            # eager materialises fp32 (T, T) probabilities and masks them: skip its slowest cases
            names = [b for b in backends if ok[b] and not (b == "eager" and T > 1024)]
            # milliseconds per call: three times the repetitions cost a few seconds
            times = interleaved({b: run(b) for b in names}, s.warmup, 3 * s.reps, s.device)
            with autocast(dtype, s.device):
                auto = select_backend(q, k)
            base = median(times["sdpa"])
            for b in names:
                rows.append([dtype, T, b, median(times[b]) * 1e3, base / median(times[b])])
            fastest = min(names, key=lambda b: median(times[b]))
            if auto in times:
                chosen = base / median(times[auto])
                best[(dtype, T)] = (auto, chosen, fastest, base / median(times[fastest]))
                rows.append([dtype, T, f"auto -> {auto}", "", chosen])
            else:
                rows.append([dtype, T, f"auto -> {auto}", "", "FAIL (not timed)"])
    report.table(
        f"Attention backends, fwd+bwd, {2048} tokens (B = 2048 / T), H={H} K={K} D={D}",
        ["dtype", "T", "backend", "ms", "speed-up vs sdpa"],
        rows,
        "bf16 runs under autocast with bf16 inputs. `check` rows: largest relative error of "
        "output and q/k/v gradients against float64 (gate: "
        + ", ".join(f"{k} <= {v}" for k, v in BACKEND_TOLERANCE.items())
        + ").",
    )
    for (dtype, T), (auto, chosen, name, speedup) in best.items():
        report.ratio(
            f"attention fwd+bwd {dtype} T={T}: sdpa / auto",
            chosen,
            f"auto: {auto}; fastest: {name} {speedup:.2f}x",
        )


# ---------------------------------------------------------------------- section: memory
class SavedBytes:
    """Counts bytes saved for backward (each storage once; parameters excluded), and separately
    those saved while ``in_gate`` is set."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in params}
        self.seen: set[int] = set()
        self.total = 0
        self.gate = 0
        self.in_gate = False

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.params and ptr not in self.seen and storage.nbytes():
            self.seen.add(ptr)
            self.total += storage.nbytes()
            if self.in_gate:
                self.gate += storage.nbytes()
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t


def _tensor_bytes(ts: Iterator[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def measure_memory(
    gate: str, dtype: str, shape: Shape, device: torch.device, **overrides: Any
) -> dict[str, float]:
    """Bytes of one training step: saved activations, gate-region activations, parameters with
    gradients and AdamW state, and (CUDA) the allocator's peak. ``overrides``: other
    ``ModelConfig`` fields (e.g. the attention normaliser)."""
    model = build(gate, device, **overrides)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = batch_for(shape, model.cfg.vocab_size, device)
    step = train_step(model, ours_loss(model), opt, x, y, dtype)
    step()  # AdamW state exists from here on
    counter = SavedBytes(list(model.parameters()))
    handles = []
    for layer in model.layers:
        # The G1 gate runs between these two taps (nn/attention.py).
        handles.append(layer.self_attn.hook_z.register_forward_hook(_set_flag(counter, True)))
        handles.append(
            layer.self_attn.hook_z_gated.register_forward_hook(_set_flag(counter, False))
        )
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        step()
    for h in handles:
        h.remove()
    params = _tensor_bytes(p for p in model.parameters())
    state = _tensor_bytes(
        t for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor)
    )
    cfg = model.cfg
    n_gate = cfg.num_hidden_layers * cfg.gate_size * cfg.hidden_size
    low_bytes = 2 if dtype == "bfloat16" else 4
    tokens = shape.batch * shape.seq
    out = {
        "saved": counter.total,
        "gate_saved": counter.gate,
        "params": params,
        "grads": params,
        "optimizer": state,
        "estimate": counter.total + 2 * params + state,
        # parameter, gradient, AdamW moments, and the autocast bf16 copy the fused linear saves
        "gate_params": n_gate * (4 + 4 + 8 + (2 if dtype == "bfloat16" else 0)),
        # what the gate must keep for backward: its logits and its input, in the compute dtype
        "gate_minimum": cfg.num_hidden_layers
        * tokens
        * (cfg.gate_size + (cfg.q_size if cfg.gate_size else 0))
        * low_bytes,
    }
    if device.type == "cuda":
        out["cuda_peak"] = torch.cuda.max_memory_allocated(device)
    return out


def _set_flag(counter: SavedBytes, value: bool) -> Callable[..., None]:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        counter.in_gate = value

    return hook


def section_memory(s: Settings, report: Report) -> None:
    rows: list[list[Any]] = []
    mb = 1 / 2**20
    for dtype in DTYPES:
        results = {g: measure_memory(g, dtype, CPU_SMALL, s.device) for g in HEADLINE_GATES}
        peak_key = "cuda_peak" if s.device.type == "cuda" else "estimate"
        base = results["none"][peak_key]
        for gate, r in results.items():
            extra = r[peak_key] - base
            needs = r["gate_minimum"] + r["gate_params"]
            ratio = extra / needs if needs else float("nan")
            rows.append(
                [
                    dtype,
                    gate,
                    r[peak_key] * mb,
                    r["saved"] * mb,
                    extra * mb,
                    r["gate_minimum"] * mb,
                    r["gate_params"] * mb,
                    ratio if gate != "none" else "",
                    r["gate_saved"] * mb,
                ]
            )
            if gate != "none":
                report.ratio(
                    f"memory {dtype} {gate}: extra vs none / gate needs",
                    ratio,
                    f"{extra * mb:.2f} MB / {needs * mb:.2f} MB",
                    "<= 1.02",
                    ratio <= 1.02,
                )
    what = "CUDA max_memory_allocated" if s.device.type == "cuda" else "estimate"
    report.table(
        f"Training-step memory ({CPU_SMALL.name}: {CPU_SMALL.batch} x {CPU_SMALL.seq}), MB",
        [
            "dtype",
            "gate",
            f"peak ({what})",
            "saved for backward",
            "extra vs none",
            "gate activations needed",
            "gate params+grad+AdamW",
            "extra / needed",
            "saved inside the gate",
        ],
        rows,
        "peak (estimate) = bytes saved for backward (each storage once, parameters excluded) + "
        "parameters + gradients + AdamW state. `gate activations needed`: what a gate must keep "
        "for its backward, its logits and its input (the pre-gate attention output, which "
        "without a gate is the `o_proj` input already kept), in the compute dtype; `needed` "
        "adds the gate's parameter bytes. `saved inside the gate`: bytes saved for backward "
        "between the taps hook_z and hook_z_gated (`ops.gating`: the pre-gate output and the "
        "gate logits; the sigmoid is recomputed in backward).",
    )


# ---------------------------------------------------------------------- section: loss
LOSS_MEMORY_SHAPE = (8192, 768, 151669)
"""(tokens, hidden, vocabulary) of the LM-head + loss memory goal: 8k tokens, the gpu-125m width
and a real tokenizer's vocabulary (Qwen3's 151,669 tokens)."""

LOSS_RSS_CHECK_SHAPE = (2048, 128, 32768)
"""A size small enough to run for real on the CPU, to check the fake-tensor accounting."""


def _loss_inputs(
    tokens: int, hidden: int, vocab: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h = (torch.randn(tokens, hidden, device=device) * 0.5).requires_grad_()
    w = (torch.randn(vocab, hidden, device=device) * 0.02).requires_grad_()
    t = torch.randint(0, vocab, (tokens,), device=device)
    return h, w, t


def _loss_fn(kind: str) -> Callable[..., torch.Tensor]:
    """``plain``: the LM head's full logits and ``lm_loss`` (float32 logits, as transformers'
    loss); ``chunked``: ``ops.loss.linear_cross_entropy``."""
    if kind == "plain":
        return lambda h, w, t: lm_loss(torch.nn.functional.linear(h, w), t)
    return linear_cross_entropy


def loss_peak_bytes(kind: str, shape: tuple[int, int, int], device: torch.device) -> float:
    """Peak bytes of one bf16-autocast forward + backward of the LM head and loss, inputs and
    the weight gradient included. CUDA: the allocator's peak. CPU: every tensor storage alive
    at once, tracked by ``torch.distributed._tools.mem_tracker.MemTracker`` on fake tensors
    (``FakeTensorMode``: shapes and lifetimes without allocating), checked against the
    measured RSS by :func:`loss_rss_check`."""
    fn = _loss_fn(kind)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        h, w, t = _loss_inputs(*shape, device)
        torch.cuda.reset_peak_memory_stats(device)
        with autocast("bfloat16", device):
            loss = fn(h, w, t)
        loss.backward()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del h, w, t, loss
        return float(peak)
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    with FakeTensorMode():
        h, w, t = _loss_inputs(*shape, device)
        tracker = MemTracker()
        tracker.track_external(h, w, t)
        with tracker:
            with autocast("bfloat16", device):
                loss = fn(h, w, t)
            loss.backward()
        return float(tracker.get_tracker_snapshot("peak")[device]["Total"])


_RSS_SCRIPT = """
import sys, torch
sys.path.insert(0, {bench!r})
import run
kind, shape = sys.argv[1], tuple(int(v) for v in sys.argv[2:5])
def step(h, w, t):
    with run.autocast("bfloat16", torch.device("cpu")):
        loss = run._loss_fn(kind)(h, w, t)
    loss.backward()
    h.grad = w.grad = None
def status(key):  # kB
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
h, w, t = run._loss_inputs(*shape, torch.device("cpu"))
step(h, w, t)  # first use: kernels' code and caches
open("/proc/self/clear_refs", "w").write("5")  # resets the peak resident size (VmHWM)
base = status("VmRSS")
step(h, w, t)
inputs = sum(x.numel() * x.element_size() for x in (h, w, t))
print(status("VmHWM") - base + inputs)
"""


def loss_rss_check(kind: str, shape: tuple[int, int, int]) -> float:
    """Measured peak RSS of one real CPU forward + backward at ``shape`` in a fresh process (the
    second step: the first loads kernels and caches; Linux's ``clear_refs`` resets the peak in
    between), less the resident size before it, plus the inputs: the quantity
    :func:`loss_peak_bytes` tracks."""
    import subprocess

    script = _RSS_SCRIPT.format(bench=str(Path(__file__).parent))
    # glibc: serve every block over 64 KB by mmap, so freed tensors leave the resident set at
    # once (its default raises that threshold as blocks are freed, and the heap then keeps them)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        "MALLOC_MMAP_THRESHOLD_": "65536",
    }
    out = subprocess.run(
        [sys.executable, "-c", script, kind, *map(str, shape)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=600,
    )
    return float(out.stdout.strip().splitlines()[-1])


def section_loss(s: Settings, report: Report) -> None:
    mb = 1 / 2**20
    rows: list[list[Any]] = []
    peaks = {k: loss_peak_bytes(k, LOSS_MEMORY_SHAPE, s.device) for k in ("plain", "chunked")}
    how = "CUDA max_memory_allocated" if s.device.type == "cuda" else "tracked (fake tensors)"
    n, hdim, v = LOSS_MEMORY_SHAPE
    for kind, peak in peaks.items():
        rows.append([f"{n} x {v}, hidden {hdim}", kind, how, peak * mb, ""])
    ratio = peaks["plain"] / peaks["chunked"]
    report.ratio(
        f"LM head + loss peak memory, vocab {v}, {n} tokens: plain / chunked",
        ratio,
        f"{peaks['plain'] * mb:.0f} MB / {peaks['chunked'] * mb:.0f} MB, bf16, {how}",
        ">= 4",
        ratio >= 4,
    )
    if s.device.type == "cpu" and s.budget.allows(30, "loss RSS check"):
        n2, h2, v2 = LOSS_RSS_CHECK_SHAPE
        for kind in ("plain", "chunked"):
            tracked = loss_peak_bytes(kind, LOSS_RSS_CHECK_SHAPE, s.device)
            measured = loss_rss_check(kind, LOSS_RSS_CHECK_SHAPE)
            rows.append(
                [
                    f"{n2} x {v2}, hidden {h2}",
                    kind,
                    "measured RSS / tracked",
                    measured * mb,
                    measured / tracked,
                ]
            )
    # time: the cpu-small LM head (2048 tokens, hidden 128, vocab 8192), fwd + bwd
    h, w, t = _loss_inputs(CPU_SMALL.batch * CPU_SMALL.seq, 128, 8192, s.device)
    cases = {}
    for dtype in DTYPES:
        for kind in ("plain", "chunked"):

            def run(kind: str = kind, dtype: str = dtype) -> None:
                with autocast(dtype, s.device):
                    loss = _loss_fn(kind)(h, w, t)
                loss.backward()
                h.grad = w.grad = None

            cases[f"{kind}|{dtype}"] = run
    times = interleaved(cases, s.warmup, 2 * s.reps, s.device)
    for dtype in DTYPES:
        plain, chunked = (median(times[f"{k}|{dtype}"]) for k in ("plain", "chunked"))
        rows.append([f"{CPU_SMALL.name} LM head", f"plain {dtype}", "ms", plain * 1e3, ""])
        rows.append(
            [f"{CPU_SMALL.name} LM head", f"chunked {dtype}", "ms", chunked * 1e3, plain / chunked]
        )
        report.ratio(
            f"LM head + loss fwd+bwd {dtype}: plain / chunked time",
            plain / chunked,
            f"{CPU_SMALL.batch * CPU_SMALL.seq} tokens, vocab 8192",
        )
    report.table(
        "LM head + cross entropy: plain (full logits) vs chunked (`ops.loss`)",
        ["size", "loss", "measure", "MB or ms", "ratio"],
        rows,
        "Memory rows: peak bytes of one bf16-autocast forward + backward, inputs (hidden, "
        "weight, targets) and gradients included. On CPU the peak is tracked on fake tensors "
        "(every storage alive at once, nothing allocated); the `measured RSS / tracked` rows run "
        "a smaller size for real in a fresh process and divide its measured peak RSS (less the "
        "process before the step, plus the inputs) by the tracked peak. Time rows: fwd + bwd, "
        "median of interleaved repetitions; ratio = plain / chunked.",
    )


# ---------------------------------------------------------------------- section: gates
def section_gates(s: Settings, report: Report) -> None:
    for shape, gates in ((SMALL, None), (CPU_SMALL, s.cpu_small_gates)):
        names = list(gates) if gates is not None else GateConfig.names()
        _gate_overhead(s, report, shape, names, compiled=False)
    names = list(s.compile_gates) if s.compile_gates is not None else GateConfig.names()
    # the headline variants first, so a time budget drops the others
    order = {g: i for i, g in enumerate(names)}
    names.sort(key=lambda g: (g not in HEADLINE_GATES, order[g]))
    _gate_overhead(s, report, CPU_SMALL, names, compiled=True)


def _gate_overhead(
    s: Settings, report: Report, shape: Shape, names: list[str], compiled: bool
) -> None:
    mode = "compiled" if compiled else "eager"
    dtypes = s.compile_dtypes if compiled else DTYPES
    cases: dict[str, Callable[[], None]] = {}
    shares: dict[str, float] = {}
    notes: list[str] = []
    for gate in names:
        # ~1 s per step and dtype cold; a compile costs ~30 s cold (inductor, CPU)
        cost = 45.0 * len(dtypes) if compiled else 2.0 * len(dtypes)
        if not s.budget.allows(cost, f"gates {shape.name} {mode} {gate}"):
            continue
        model = build(gate, s.device)
        total, extra = matmul_flops_per_token(model.cfg, shape.seq)
        shares[gate] = extra / total
        x, y = batch_for(shape, model.cfg.vocab_size, s.device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        forward = torch.compile(model) if compiled else model
        loss_fn = ours_loss(forward)
        for dtype in dtypes:
            if compiled:
                # Compiled: the training step only (what the trainer compiles); a no_grad
                # forward would be one more compilation.
                t0 = time.perf_counter()
                ok = _compiled_matches(model, forward, x, y, dtype)
                train_step(model, loss_fn, opt, x, y, dtype)()  # compiles the backward too
                notes.append(f"{gate} {dtype}: compile {time.perf_counter() - t0:.0f} s")
                if not ok:
                    notes.append(f"{gate} {dtype}: compiled loss differs from eager: FAIL")
                    continue
            cases[f"{gate}|{dtype}|train"] = train_step(model, loss_fn, opt, x, y, dtype)
            if not compiled:
                fn = (lambda m: lambda x: logits_of(m, x))(forward)
                cases[f"{gate}|{dtype}|forward"] = forward_only(fn, x, dtype)
    if not cases:
        return
    # the compiled section times three cases: affordable to repeat more
    reps = 2 * s.reps if compiled else s.reps
    times = interleaved(cases, s.warmup, reps, s.device)
    rows: list[list[Any]] = []
    tokens = shape.batch * shape.seq
    for key, ts in times.items():
        gate, dtype, kind = key.split("|")
        base_key = f"none|{dtype}|{kind}"
        ratio = median(times[base_key]) / median(ts) if base_key in times else float("nan")
        rows.append([gate, dtype, kind, tokens / median(ts), 1 / ratio, shares[gate]])
        if kind == "train" and shape is CPU_SMALL and gate in ("sdpa-headwise", "sdpa-elementwise"):
            over = 1 / ratio
            limit = 1.02 if gate == "sdpa-headwise" else 1 + shares[gate] + 0.02
            report.ratio(
                f"train step {mode} {dtype}: {gate} / none",
                over,
                f"{shape.name}; extra FLOPs {shares[gate]:.1%}",
                f"<= {limit:.3f}",
                over <= limit,
            )
    rows.sort(key=lambda r: (r[2], r[1], names.index(r[0])))
    report.table(
        f"Gate overhead, {shape.name} ({shape.batch} x {shape.seq}), {mode}",
        ["gate", "dtype", "step", "tokens/s", "time vs none", "extra FLOPs share"],
        rows,
        "train = forward + backward + AdamW; forward = no_grad forward. `extra FLOPs share`: the "
        "gate projection's matmul FLOPs / all matmul FLOPs per token (analytic)."
        + ("\n\n" + "; ".join(notes) if notes else ""),
    )


def _compiled_matches(
    model: GatedLM, compiled: Callable[..., Any], x: torch.Tensor, y: torch.Tensor, dtype: str
) -> bool:
    """The compiled training loss equals the eager one (this call compiles the forward the
    steps reuse, with gradients on as in training)."""
    with autocast(dtype, x.device):
        ref = float(ours_loss(model)(x, y))
        out = float(ours_loss(compiled)(x, y))
    tol = 1e-4 if dtype == "float32" else 2e-2
    return abs(out - ref) <= tol * abs(ref)


# ---------------------------------------------------------------------- section: hf
def hf_twin(model: GatedLM, fmt: str) -> torch.nn.Module:
    """The ``transformers`` model of format ``fmt`` with the weights of ``model`` (on CPU),
    through our checkpoint converter (``hf/convert.py``)."""
    import transformers

    from gated_attention.hf.convert import export_checkpoint
    from gated_attention.hf.modeling import GatedAttentionForCausalLM

    cls = transformers.Qwen3ForCausalLM if fmt == "qwen3" else transformers.Qwen3NextForCausalLM
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = Path(tmp, "ours"), Path(tmp, fmt)
        GatedAttentionForCausalLM.from_gated_lm(model).save_pretrained(ours)
        export_checkpoint(fmt, ours, theirs)
        return cls.from_pretrained(theirs, attn_implementation="sdpa", dtype=torch.float32)


HF_PAIRS = {
    # name: (our gate, our config overrides, transformers format)
    "Qwen3": ("none", {}, "qwen3"),
    "Qwen3-Next": (
        "sdpa-elementwise",
        {"norm_type": "zero_centered", "qk_norm": "zero_centered", "partial_rotary_factor": 0.25},
        "qwen3-next",
    ),
}


def section_hf(s: Settings, report: Report) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("gated_attention").setLevel(logging.WARNING)
    train_rows: list[list[Any]] = []
    gen_rows: list[list[Any]] = []
    shape = CPU_SMALL
    for name, (gate, overrides, fmt) in HF_PAIRS.items():
        if not s.budget.allows(20, f"hf {name}"):
            continue
        ours = build(gate, torch.device("cpu"), **overrides)
        twin = hf_twin(ours, fmt).to(s.device)
        ours.to(s.device)
        x, y = batch_for(shape, ours.cfg.vocab_size, s.device)
        with torch.no_grad():
            err = float((ours(x[:2]).logits - twin(x[:2]).logits).abs().max())
            loss_err = abs(float(ours_loss(ours)(x, y)) - float(hf_loss(twin)(x, y)))
        if err > 1e-4 or loss_err > 1e-4:
            train_rows.append(
                [name, "-", "-", "-", "-", f"FAIL: logits {err:.1e}, loss {loss_err:.1e}"]
            )
            continue
        models: dict[str, tuple[torch.nn.Module, Loss]] = {
            "ours": (ours, ours_loss(ours)),
            "transformers": (twin, hf_loss(twin)),
        }
        compile_notes = []
        # Compiled (what train.compile = true runs): ~1 min per dtype cold on 2 CPU cores.
        for who, model, make in (("ours", ours, ours_loss), ("transformers", twin, hf_loss)):
            quick_skip = s.quick and (who == "transformers" or name != "Qwen3")
            if quick_skip or not s.budget.allows(60 * len(DTYPES), f"hf {name} compiled {who}"):
                continue
            twin_copy = copy.deepcopy(model)
            models[f"{who} compiled"] = (twin_copy, make(torch.compile(twin_copy)))
        cases = {}
        for dtype in DTYPES:
            for who, (model, loss_fn) in models.items():
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
                step = train_step(model, loss_fn, opt, x, y, dtype)
                if who.endswith("compiled"):
                    t0 = time.perf_counter()
                    step()
                    compile_notes.append(f"{who} {dtype}: compile {time.perf_counter() - t0:.0f} s")
                cases[f"{who}|{dtype}"] = step
        times = interleaved(cases, s.warmup, s.reps, s.device)
        tokens = shape.batch * shape.seq
        for dtype in DTYPES:
            h = median(times[f"transformers|{dtype}"])
            goal = {"Qwen3": 1.5 if dtype == "bfloat16" else 1.2}.get(name)
            for who in models:
                t = median(times[f"{who}|{dtype}"])
                train_rows.append([name, dtype, who, tokens / t, tokens / h, h / t])
                if who.startswith("ours"):
                    report.ratio(
                        f"train tokens/s {dtype}: {who} / {name} eager",
                        h / t,
                        shape.name,
                        f">= {goal}" if goal else "",
                        h / t >= goal if goal else None,
                    )
            if "ours compiled" in models and "transformers compiled" in models:
                t = median(times[f"ours compiled|{dtype}"])
                tc = median(times[f"transformers compiled|{dtype}"])
                report.ratio(f"train tokens/s {dtype}: ours / {name}, both compiled", tc / t)
        if compile_notes:
            report.notes.append(f"{name}: " + "; ".join(compile_notes) + ".")
        _generation(s, report, name, ours.eval(), twin.eval(), gen_rows)
    report.table(
        f"Training vs transformers ({shape.name}: {shape.batch} x {shape.seq})",
        ["baseline", "dtype", "path", "tokens/s", "transformers eager tokens/s", "ratio"],
        train_rows,
        "Identical config and weights (converted by `gated_attention.hf.convert`), one step "
        "each per round, interleaved: autocast forward with each library's own training loss "
        "(ours: `GatedLM(x, targets=y)`, the trainer's chunked LM head + cross entropy; "
        "transformers: `model(x, labels=y, shift_labels=y)`, its `ForCausalLMLoss` on full "
        "float32 logits), backward, AdamW (same settings); transformers with "
        "`attn_implementation='sdpa'`. `compiled` = `torch.compile` of the model (the trainer's "
        "`train.compile = true`); `ratio` = path tokens/s / transformers eager tokens/s. Logits "
        "and losses are checked equal (1e-4) before timing.",
    )
    report.table(
        f"Generation vs transformers (greedy, KV cache, {s.gen_tokens} new tokens, prompt 16, fp32)",
        ["baseline", "batch", "path", "tokens/s", "vs transformers", "same tokens", "note"],
        gen_rows,
        "`fast` = `gated_attention.generation.generate` (static cache), `fast, compiled` the "
        "same with `compile=True` (decoding step compiled once; compile time in the note, not "
        "in tokens/s); `growing cache` = the same loop with a growing `KVCache`; transformers = "
        "`generate(max_new_tokens=n, min_new_tokens=n, do_sample=False)`, dynamic cache. "
        "`same tokens`: equal to the growing cache's.",
    )


def _generation(
    s: Settings,
    report: Report,
    name: str,
    ours: GatedLM,
    twin: torch.nn.Module,
    rows: list[list[Any]],
) -> None:
    n = s.gen_tokens
    for batch in (1, 8):
        gen = torch.Generator().manual_seed(batch)
        prompt = torch.randint(0, ours.cfg.vocab_size, (batch, 16), generator=gen).to(s.device)

        def theirs(prompt: torch.Tensor = prompt) -> torch.Tensor:
            return twin.generate(
                prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
            )

        paths: dict[str, Callable[[], torch.Tensor]] = {
            "fast": lambda prompt=prompt: fast_generate(ours, prompt, n),
            "growing cache": lambda prompt=prompt: fast_generate(ours, prompt, n, cache=KVCache()),
            "transformers": theirs,
        }
        # Compiling the decoding step costs ~10-30 s per batch size on CPU (excluded from
        # tokens/s, reported beside it); quick runs compile for the first baseline only.
        note = ""
        if (not s.quick or name == next(iter(HF_PAIRS))) and s.budget.allows(
            40, f"hf {name} batch {batch} compiled generation"
        ):
            t0 = time.perf_counter()
            fast_generate(ours, prompt, n, compile=True)
            note = f"compile {time.perf_counter() - t0:.0f} s"
            paths["fast, compiled"] = lambda prompt=prompt: fast_generate(
                ours, prompt, n, compile=True
            )
        ref = fast_generate(ours, prompt, n, cache=KVCache())
        same = {k: bool(torch.equal(fn(), ref)) for k, fn in paths.items()}
        for path in ("fast", "fast, compiled"):
            if path in paths and not same[path]:
                rows.append([name, batch, path, "FAIL: tokens differ from the growing cache's"])
                del paths[path]
        times = interleaved(paths, 1, s.reps, s.device)
        base = median(times["transformers"])
        for path, ts in times.items():
            extra = note if path == "fast, compiled" else ""
            rows.append(
                [name, batch, path, batch * n / median(ts), base / median(ts), same[path], extra]
            )
        fastest = min((p for p in times if p.startswith("fast")), key=lambda p: median(times[p]))
        speedup = base / median(times[fastest])
        goal = batch == 1 and name == "Qwen3"
        report.ratio(
            f"generation tokens/s batch {batch}: ours / {name}",
            speedup,
            f"{fastest}; eager fast {base / median(times['fast']):.2f}"
            if "fast" in times
            else fastest,
            ">= 2" if goal else "",
            speedup >= 2 if goal else None,
        )


# ---------------------------------------------------------------------- section: static
def section_static(s: Settings, report: Report) -> None:
    """``transformers``' static-cache, compiled ``generate`` on :class:`GatedAttentionForCausalLM`
    against our fast loop on the same weights (``small`` preset, G1 elementwise gate)."""
    import transformers
    from transformers import CompileConfig

    from gated_attention.hf import GatedAttentionForCausalLM

    transformers.logging.set_verbosity_error()
    logging.getLogger("gated_attention").setLevel(logging.WARNING)
    n = s.gen_tokens
    ours = build("sdpa-elementwise", s.device).eval()
    hf = GatedAttentionForCausalLM.from_gated_lm(ours).eval()
    # transformers compiles generate's decoding forward on accelerators only unless told.
    compile_config = CompileConfig(fullgraph=True)
    compile_config._compile_all_devices = s.device.type == "cpu"
    rows: list[list[Any]] = []
    for batch in (1, 8):
        if not s.budget.allows(90, f"static batch {batch}"):
            continue
        gen = torch.Generator().manual_seed(batch)
        prompt = torch.randint(3, ours.cfg.vocab_size, (batch, 16), generator=gen).to(s.device)

        def hf_generate(prompt: torch.Tensor = prompt, **kwargs: Any) -> torch.Tensor:
            return hf.generate(
                prompt,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                cache_implementation="static",
                **kwargs,
            )

        paths: dict[str, Callable[[], torch.Tensor]] = {
            "transformers static, compiled": lambda: hf_generate(compile_config=compile_config),
            "transformers static, eager": lambda: hf_generate(disable_compile=True),
            "fast, compiled": lambda prompt=prompt: fast_generate(ours, prompt, n, compile=True),
            "fast, eager": lambda prompt=prompt: fast_generate(ours, prompt, n),
        }
        compile_s = {}
        for path in ("transformers static, compiled", "fast, compiled"):
            t0 = time.perf_counter()
            paths[path]()  # the first call compiles (excluded from tokens/s)
            compile_s[path] = time.perf_counter() - t0
        ref = fast_generate(ours, prompt, n, cache=KVCache())
        for path in list(paths):
            if not torch.equal(paths[path](), ref):
                rows.append([batch, path, "FAIL: tokens differ from the growing cache's", "", ""])
                del paths[path]
        if "transformers static, compiled" not in paths:
            continue
        times = interleaved(paths, 1, s.reps, s.device)
        base = median(times["transformers static, compiled"])
        for path, ts in times.items():
            note = f"first call {compile_s[path]:.0f} s" if path in compile_s else ""
            rows.append([batch, path, batch * n / median(ts), base / median(ts), note])
        if "fast, compiled" in times:
            report.ratio(
                f"static-cache decoding batch {batch}: fast loop / transformers compiled",
                base / median(times["fast, compiled"]),
                "both compiled, same weights (GatedAttentionForCausalLM)",
            )
    report.table(
        f"Static-cache decoding: transformers' compiled generate vs our loop "
        f"(greedy, {n} new tokens, prompt 16, fp32, small preset, G1 elementwise)",
        ["batch", "path", "tokens/s", "vs transformers compiled", "note"],
        rows,
        "`transformers static` = `GatedAttentionForCausalLM.generate(cache_implementation="
        "'static')`, compiled by transformers (`CompileConfig(fullgraph=True)`) or with "
        "`disable_compile=True`; `fast` = `gated_attention.generation.generate` on the same "
        "weights (`compile=True`: its decoding step compiled once). Every path's tokens are "
        "checked equal to a growing-cache reference before timing; compile time is excluded.",
    )


# ---------------------------------------------------------------------- environment
def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores kept busy by other processes now (``/proc/stat`` over ``seconds``, while this
    process sleeps), or ``None`` where that file does not exist."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 == total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def idle_threads() -> tuple[int, str]:
    """torch's default thread count less the cores other processes keep busy, and why.

    Oversubscribed threads make every parallel op wait for a descheduled thread: on 2 cores
    with one kept busy, attention ran ~5x slower on 2 threads than on 1."""
    default = torch.get_num_threads()
    busy = busy_cores()
    if busy is None:
        return default, "torch default"
    threads = max(1, min(default, (os.cpu_count() or default) - round(busy)))
    return threads, f"{busy:.1f} cores busy with other work at start"


def machine(device: torch.device) -> list[str]:
    """Platform, CPU model, cores, threads, versions (no host names or paths)."""
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    lines = [
        f"platform: {platform.system()} {platform.release()} {platform.machine()}",
        f"cpu: {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        f"load average (1/5/15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
        if hasattr(os, "getloadavg")
        else "load average: n/a",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
    ]
    if device.type == "cuda":
        lines.append(f"gpu: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}")
    return lines


# ---------------------------------------------------------------------- section: moe
def _skip_idle_experts(self: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The MoE dispatch that skips experts without tokens (before every expert joined each
    step, ``nn/moe.py``): cheaper by the empty calls, but data-parallel ranks then reduce
    different parameters and their collectives desynchronise. Kept here to price the fix."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    routing = self.route(flat)
    out = torch.zeros_like(flat)
    token_idx = torch.arange(flat.shape[0], device=x.device).repeat_interleave(self.cfg.top_k)
    expert_idx = routing.experts.reshape(-1)
    weight = routing.weights.reshape(-1, 1)
    order = expert_idx.argsort(stable=True)
    counts = torch.bincount(expert_idx, minlength=self.cfg.num_experts).tolist()
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        sel = order[start : start + n]
        start += n
        tokens = token_idx[sel]
        out.index_add_(0, tokens, self.experts[e](flat[tokens]) * weight[sel])
    if self.shared_expert is not None:
        out = out + self.shared_expert(flat)
    return out.reshape(shape), self.aux_loss(routing)


def section_moe(s: Settings, report: Report) -> None:
    """Price of running every expert on every step (also on zero tokens), so that DDP and FSDP2
    reduce the same parameters on every rank: fwd+bwd of the ``small-moe`` preset against the
    dispatch that skips idle experts, at micro-batches small enough to leave experts idle."""
    from gated_attention.nn.moe import MoEFeedForward

    torch.manual_seed(0)
    model = GatedLM(ModelConfig.from_preset("small-moe")).to(s.device)
    every = MoEFeedForward.forward
    rows: list[list[Any]] = []
    for batch, seq in ((1, 4), (2, 8), (4, 32), (16, 128)):
        ids = torch.randint(0, model.cfg.vocab_size, (batch, seq), device=s.device)
        idle: list[int] = []

        def count(module: Any, args: tuple[torch.Tensor, ...], idle: list[int] = idle) -> None:
            flat = args[0].reshape(-1, args[0].shape[-1])
            experts = module.route(flat).experts.reshape(-1)
            idle.append(int((torch.bincount(experts, minlength=module.cfg.num_experts) == 0).sum()))

        hooks = [layer.mlp.register_forward_pre_hook(count) for layer in model.layers]
        with torch.no_grad():
            model(ids)
        for hook in hooks:
            hook.remove()

        def step(forward: Callable[..., Any], ids: torch.Tensor = ids) -> Callable[[], None]:
            def run() -> None:
                MoEFeedForward.forward = forward
                try:
                    model(ids, targets=ids).loss.backward()
                finally:
                    MoEFeedForward.forward = every
                model.zero_grad(set_to_none=True)

            return run

        times = interleaved(
            {"every": step(every), "skip": step(_skip_idle_experts)},
            s.warmup,
            2 * s.reps,
            s.device,
        )
        ratio = median(times["every"]) / median(times["skip"])
        rows.append(
            [
                f"{batch} x {seq}",
                sum(idle) / len(idle),
                median(times["skip"]) * 1e3,
                median(times["every"]) * 1e3,
                ratio,
            ]
        )
        report.ratio(f"MoE fwd+bwd {batch} x {seq}: every expert / skip idle", ratio)
    report.table(
        "MoE: every expert in every step vs skipping idle experts (small-moe, fwd+bwd)",
        [
            "tokens",
            "idle experts per layer (of 8)",
            "skip ms",
            "every ms",
            "every / skip",
        ],
        rows,
        "`every`: the dispatch in `nn/moe.py` (an expert without tokens runs on an empty batch "
        "and gets a zero gradient, so every data-parallel rank reduces the same parameters); "
        "`skip`: the former dispatch, which skipped idle experts. Idle experts: mean over layers "
        "in this batch's forward.",
    )


# ---------------------------------------------------------------------- section: scale
SCALE_CONFIG = Path(__file__).parents[1] / "configs" / "gpu-125m.toml"
SCALE_GATES = ("none", "sdpa-elementwise", "sdpa-headwise")
"""Baseline and the paper's two G1 gates (Table 1 rows 5 and 10)."""

SCALE_VOCAB = 50257
"""Vocabulary of the scale section: GPT-2's tokenizer, which the README's GPU corpus uses (the
model's vocabulary follows the tokenizer; the config file leaves it to the data)."""


def peak_matmul_flops(device: torch.device, tiny: bool) -> float:
    """The device's bf16 matmul throughput (FLOP/s), measured here: the best of several
    square bf16 matmuls (8192^3 on a GPU; 512^3 with ``--tiny``)."""
    n = 512 if tiny else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = math.inf
    for _ in range(3 if tiny else 10):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - t0) / 5)
    return 2 * n**3 / best


def scale_run_config(tiny: bool) -> tuple[Any, int, int]:
    """The gpu-125m run config (``--tiny``: at dry-run size), its micro-batch and length."""
    from gated_attention.train import load_run_config
    from gated_attention.train.dryrun import DRY_MICRO_BATCH, DRY_SEQ_LEN, dry_run_config

    cfg = load_run_config(SCALE_CONFIG)
    if tiny:
        cfg = dry_run_config(cfg, tempfile.gettempdir())
        return cfg, DRY_MICRO_BATCH, DRY_SEQ_LEN
    return cfg, cfg.train.batch_size // cfg.train.grad_accum, cfg.data.seq_len


def section_scale(s: Settings, report: Report) -> None:
    """Training at the gpu-125m config (``configs/gpu-125m.toml``): tokens/s, MFU and peak
    memory of baseline, elementwise and headwise G1, and the baseline against transformers'
    Qwen3 with the same weights; eager and compiled (the config's ``train.compile``)."""
    import transformers

    from gated_attention.train.optim import build_optimizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    cfg, micro, seq = scale_run_config(s.tiny)
    if s.device.type != "cuda" and not s.tiny:
        report.notes.append("scale: needs --device cuda (or --tiny to check it on the CPU)")
        return
    peak = peak_matmul_flops(s.device, s.tiny)
    # on the CPU (--tiny) compile traces like inductor without generating kernels
    backend = "inductor" if s.device.type == "cuda" else "aot_eager"
    tokens = micro * seq
    cases: dict[str, Callable[[], None]] = {}
    memory: dict[str, float] = {}
    notes: list[str] = []
    model_cfg = cfg.model_config(None if s.tiny else SCALE_VOCAB)
    x, y = batch_for(Shape("scale", micro, seq), model_cfg.vocab_size, s.device)
    # forward matmul FLOPs per token of each model (the gates add their projection)
    fwd_flops = {
        gate: matmul_flops_per_token(model_cfg.replace(gate=gate), seq)[0] for gate in SCALE_GATES
    }

    def add(name: str, make: Callable[[], torch.nn.Module], loss: Callable[..., Loss]) -> None:
        """Build the model, compile it if ``name`` says so, take one step (compiles, creates
        the AdamW state), measure one step's peak memory, keep the step for timing."""
        compiled = name.endswith("compiled")
        if compiled and not s.budget.allows(90, f"scale {name}"):
            return
        if s.device.type == "cuda":
            synchronize(s.device)
            resident = torch.cuda.memory_allocated(s.device)
        model = make()
        opt = build_optimizer(model, cfg.train)
        forward = torch.compile(model, backend=backend) if compiled else model
        step = train_step(model, loss(forward), opt, x, y, cfg.train.dtype)
        t0 = time.perf_counter()
        step()
        if compiled:
            notes.append(f"{name}: compile {time.perf_counter() - t0:.0f} s")
        if s.device.type == "cuda":
            synchronize(s.device)
            torch.cuda.reset_peak_memory_stats(s.device)
            step()
            synchronize(s.device)
            memory[name] = torch.cuda.max_memory_allocated(s.device) - resident
        cases[name] = step

    def ours(gate: str) -> Callable[[], torch.nn.Module]:
        def make() -> torch.nn.Module:
            torch.manual_seed(cfg.seed)
            return GatedLM(model_cfg.replace(gate=gate)).to(s.device)

        return make

    for gate in SCALE_GATES:
        for mode in ("", " compiled"):
            add(f"{gate}{mode}", ours(gate), ours_loss)
    if s.budget.allows(60, "scale transformers"):
        twin = hf_twin(ours("none")().cpu(), "qwen3")  # the baseline's weights
        for mode in ("", " compiled"):
            add(f"transformers{mode}", lambda: copy.deepcopy(twin).to(s.device), hf_loss)
    times = interleaved(cases, 1 if s.tiny else 2, s.reps, s.device)
    rows: list[list[Any]] = []
    gb = 1 / 2**30
    for name, ts in times.items():
        t = median(ts)
        base = name.replace("sdpa-elementwise", "none").replace("sdpa-headwise", "none")
        overhead = t / median(times[base]) if base in times and base != name else ""
        gate = next((g for g in SCALE_GATES if name.startswith(g)), "none")
        mfu = tokens / t * 3 * fwd_flops[gate] / peak
        rows.append(
            [name, tokens / t, mfu, overhead, memory[name] * gb if name in memory else "n/a"]
        )
        if name.startswith("sdpa-"):
            report.ratio(f"gpu-125m step: {name} / {base}", overhead, f"MFU {mfu:.1%}")
    for mode in ("", " compiled"):
        mine, theirs = f"none{mode}", f"transformers{mode}"
        if mine in times and theirs in times:
            report.ratio(
                f"gpu-125m train tokens/s{mode or ' eager'}: ours / transformers Qwen3",
                median(times[theirs]) / median(times[mine]),
            )
    device = torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else "CPU (--tiny)"
    report.table(
        f"Training at gpu-125m ({micro} x {seq} tokens per step, vocabulary "
        f"{model_cfg.vocab_size}{', --tiny' if s.tiny else ''}), {device}",
        ["model", "tokens/s", "MFU", "step time vs baseline", "peak memory GB"],
        rows,
        f"bf16 autocast, fp32 weights and AdamW as `configs/gpu-125m.toml` trains (one "
        f"micro-batch per step, no accumulation); each step's time the median of interleaved "
        f"repetitions. MFU = tokens/s x 3 x forward matmul FLOPs per token (projections, "
        f"causal attention, LM head; `matmul_flops_per_token`) / the bf16 matmul peak measured "
        f"in this run: {peak / 1e12:.1f} TFLOP/s. `compiled`: torch.compile ({backend}). "
        "transformers: Qwen3ForCausalLM with the baseline's weights, its own loss. Peak memory: "
        "the allocator's peak during one step above what was allocated before the model was "
        "built (weights, gradients, AdamW state, activations)."
        + ("\n\n" + "; ".join(notes) if notes else ""),
    )


# ---------------------------------------------------------------------- section: normalizers
def normalizer_setting(kind: str, seq: int) -> str | dict[str, Any]:
    """The ``ModelConfig.normalizer`` of ``kind`` for training at ``seq`` tokens (sigmoid's
    bias ``-log n`` at the training length)."""
    return {"kind": kind, "length": seq} if kind == "sigmoid" else kind


def normalizer_error(kind: str, device: torch.device) -> tuple[str, float]:
    """The ``auto`` backend of ``kind`` (bf16 CPU rule) and its worst relative error of output,
    q/k/v and parameter gradients against the float64 reference (T = 63, GQA 3:1, random
    per-head parameters)."""
    H, K, D = 6, 2, 16
    cfg = ModelConfig(
        num_attention_heads=H,
        num_key_value_heads=K,
        head_dim=D,
        normalizer=normalizer_setting(kind, 63),
    )
    gen = torch.Generator().manual_seed(2)
    params = {
        n: torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
        for n, shape in cfg.normalizer.parameter_shapes(cfg).items()
    }
    norm = Normalizer(KINDS[kind], KINDS[kind].resolve(cfg.normalizer.options, cfg), params)
    ins = [t.requires_grad_() for t in _attention_inputs(2, 63, H, K, D, device, torch.float64, 1)]
    out = attention(*ins, normalizer=norm)
    ref_ins = [t.detach().clone().requires_grad_() for t in ins]
    ref_params = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    ref = reference_attention(*ref_ins, kind=kind, params=ref_params, options=norm.options).to(
        device
    )
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device)
    got = [out, *torch.autograd.grad(out, [*ins, *params.values()], g)]
    want = [ref, *torch.autograd.grad(ref, [*ref_ins, *ref_params.values()], g)]
    errs = [
        float((a.detach() - b.detach()).abs().max() / b.detach().abs().max())
        for a, b in zip(got, want)
    ]
    low = ins[0].detach().bfloat16()
    auto = select_backend(low, low[:, :, :K], None, norm)
    return auto, max(errs)


def forward_backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: str):
    """One forward (under autocast) and backward of the LM loss; gradients dropped after."""

    def run() -> None:
        with autocast(dtype, x.device):
            loss = lm_loss(logits_of(model, x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return run


def section_normalizers(s: Settings, report: Report) -> None:
    shape = CPU_SMALL
    kinds = list(KINDS)
    rows: list[list[Any]] = []
    checked: dict[str, tuple[str, float]] = {}
    for kind in kinds:
        checked[kind] = normalizer_error(kind, s.device)
    ok = [k for k in kinds if checked[k][1] <= 1e-10]
    # cpu-small trains in bf16: a quick run times that dtype only
    dtypes = ("bfloat16",) if s.quick else DTYPES
    cases: dict[str, Callable[[], None]] = {}
    for kind in ok:
        model = build("none", s.device, normalizer=normalizer_setting(kind, shape.seq))
        x, y = batch_for(shape, model.cfg.vocab_size, s.device)
        for dtype in dtypes:
            cases[f"{kind}|{dtype}"] = forward_backward(model, x, y, dtype)
    times = interleaved(cases, s.warmup, s.reps, s.device)
    mb = 1 / 2**20
    peak_key = "cuda_peak" if s.device.type == "cuda" else "estimate"
    for dtype in dtypes:
        memory = {
            k: measure_memory(
                "none", dtype, shape, s.device, normalizer=normalizer_setting(k, shape.seq)
            )[peak_key]
            for k in ok
        }
        base_t = median(times[f"softmax|{dtype}"])
        for kind in kinds:
            auto, err = checked[kind]
            if kind not in ok:
                rows.append([kind, dtype, auto, f"{err:.1e}", "FAIL", "", "", ""])
                continue
            t = median(times[f"{kind}|{dtype}"])
            ratio_t, ratio_m = t / base_t, memory[kind] / memory["softmax"]
            rows.append(
                [kind, dtype, auto, f"{err:.1e}", t * 1e3, ratio_t, memory[kind] * mb, ratio_m]
            )
            if kind != "softmax":
                report.ratio(
                    f"normalizer fwd+bwd {dtype}: {kind} / softmax",
                    ratio_t,
                    f"{shape.name}; memory {ratio_m:.3f}x; auto -> {auto}",
                )
    what = "CUDA max_memory_allocated" if s.device.type == "cuda" else "estimate"
    report.table(
        f"Attention normalizers, {shape.name} ({shape.batch} x {shape.seq}), forward+backward",
        [
            "normalizer",
            "dtype",
            "auto (bf16)",
            "check err",
            "ms",
            "time vs softmax",
            f"step memory MB ({what})",
            "memory vs softmax",
        ],
        rows,
        "Ungated `small` preset, one model per normalizer, cases interleaved. `check err`: "
        "largest relative error of the output and all gradients (inputs and per-head "
        "parameters) of `auto` attention against the float64 reference in float64 (gate: "
        "1e-10). `auto (bf16)`: the backend `auto` picks for bf16 CPU attention at this length "
        "(columns kinds on SDPA with the virtual columns prepended, elementwise kinds on eager). "
        "Memory: the `memory` section's training-step estimate (saved for backward + "
        "parameters, gradients, AdamW). sigmoid: `length` = the training length.",
    )


SECTIONS: dict[str, Callable[[Settings, Report], None]] = {
    "backends": section_backends,
    "memory": section_memory,
    "loss": section_loss,
    "hf": section_hf,
    "gates": section_gates,
    "static": section_static,
    "normalizers": section_normalizers,
    "moe": section_moe,
    "scale": section_scale,
}
"""Run in this order: the cheap, decisive sections first, the goals against ``transformers``
next, the gate variants' compilations last, so a time budget drops the optional work."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes; about 7 min on CPU")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: the cores left idle by other processes)",
    )
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds (quick default 420; full: none)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(SECTIONS),
        default=None,
        help="sections to run (default: all; `scale` only on CUDA or with --tiny)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="the scale section at dry-run size, to check it on the CPU (benchmarks/gpu.sh --tiny)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads:
        threads, why = args.threads, "--threads"
    else:
        threads, why = idle_threads()
    torch.set_num_threads(threads)
    s = Settings.from_args(args)
    report = Report()
    env = [*machine(s.device), f"threads: {threads} ({why})"]
    print("\n".join(env), flush=True)
    started = time.perf_counter()
    only = args.only or [k for k in SECTIONS if k != "scale" or s.device.type == "cuda" or s.tiny]
    for name in only:
        t0 = time.perf_counter()
        SECTIONS[name](s, report)
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]", flush=True)
    elapsed = time.perf_counter() - started
    if s.budget.skipped:
        report.notes.append("Skipped for the time budget: " + "; ".join(s.budget.skipped) + ".")
    print("\n## Summary (ratios of medians; times: lower is better, tokens/s: higher)")
    print("\n".join(report.summary()))
    print(f"\n[total {elapsed:.0f} s]")
    if not args.no_save:
        save(args, env, report, elapsed)


def save(args: argparse.Namespace, env: list[str], report: Report, elapsed: float) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if sys.argv[1:] else [])
    lines = [f"\n# {stamp}: `{command.strip()}` ({elapsed:.0f} s)", ""]
    lines += [f"- {e}" for e in env]
    for title, table in report.sections:
        lines += ["", f"## {title}", "", *table]
    lines += ["", "## Summary (ratios of medians)", "", *report.summary(), ""]
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\nAppended by `benchmarks/run.py`; newest last. Timings are "
            "medians of interleaved repetitions; compare ratios within one run.\n"
        )
    with RESULTS.open("a") as f:
        f.write("\n".join(lines))
    print(f"appended to {RESULTS.name}")


if __name__ == "__main__":
    main()
