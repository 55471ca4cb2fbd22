"""Where the embedded denoiser's time goes at the default study's shapes, operator by operator, and
how close each kind of operator runs to the one-thread GEMM rate (docs/performance.md#the-ceiling-at-these-shapes).

One process, one thread by default. Prints JSON lines:

- `gemm`: FLOP/s of an fp32 512 x 512 matmul (the reference rate, best of 20, CPU time);
- `linear`: each linear-layer shape of a forward over `--rows` denoiser rows (64 image tokens per
  row, 16 text tokens), as a fraction of that rate;
- `elementwise`: the feed-forward activation (tanh-approximated GELU, as the model uses) against
  its own parts (`tanh`) and exact GELU on the same tensor, in milliseconds;
- `attention`: `scaled_dot_product_attention` against softmax(QK^T / sqrt(d)) V in two batched
  matmuls, for the self-attention's shape;
- `model`: the shipped dit16-flow denoiser's forward and forward + backward over `--rows` rows:
  CPU seconds (best of `--repeats`), GFLOP (torch's FLOP counter) and the fraction of the GEMM
  rate, and the share of the profiled time by kind of operator (matmul, attention, GELU, copies,
  elementwise, layer norm, the rest);
- with `--compile`: the same forward + backward under `torch.compile` (inductor), its compile CPU
  seconds and its time per call.

    python -m tests.benchmarks.kernels [--rows 144] [--repeats 8] [--threads 1] [--compile]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from tests.benchmarks.rl_step import gemm_rate

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "results" / "models" / "dit16-flow" / "transformer"
KINDS = {  # profiler operator name (after "aten::") -> kind
    "mm": "matmul",
    "addmm": "matmul",
    "bmm": "matmul",
    "baddbmm": "matmul",
    "gelu": "gelu",
    "gelu_backward": "gelu",
    "copy_": "copies",
    "clone": "copies",
    "cat": "copies",
    "native_layer_norm": "layer norm",
    "native_layer_norm_backward": "layer norm",
    "mul": "elementwise",
    "add": "elementwise",
    "add_": "elementwise",
    "div": "elementwise",
    "sum": "elementwise",
    "fill_": "elementwise",
}


def best_cpu(f: Callable[[], object], repeats: int) -> float:
    """The least CPU time of `repeats` calls after two warm-up calls."""
    f()
    f()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        f()
        best = min(best, time.process_time() - start)
    return best


def kind_of(name: str) -> str:
    op = name.removeprefix("aten::")
    if "scaled_dot_product" in op:
        return "attention"
    return KINDS.get(op, "rest")


def shares(f: Callable[[], object]) -> dict[str, float]:
    """Share of the profiled self CPU time of three calls by kind of operator (leaf operators only)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            f()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        kind = kind_of(event.key)
        totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total
    whole = sum(totals.values())
    return {k: round(v / whole, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=144, help="denoiser rows (a training update: 8 x 9 x 2)")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (tens of CPU-seconds)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from t2i_rl_bench.models.dit import PixArtDiT

    def emit(what: str, **row: object) -> None:
        print(json.dumps({"what": what, **row}), flush=True)

    gemm = gemm_rate()  # the same reference rate as rl_step's
    emit("gemm", gflops=round(gemm / 1e9, 1), threads=args.threads)

    model = PixArtDiT.from_pretrained(MODEL).train()
    dim = model.config.num_attention_heads * model.config.attention_head_dim
    heads, head_dim = model.config.num_attention_heads, model.config.attention_head_dim
    side = model.config.sample_size // model.config.patch_size
    tokens, rows = side * side, args.rows
    shapes = {  # (M, K, N) of the forward's matmuls; the backward's are their transposes
        "q/k/v/out, self-attention": (rows * tokens, dim, dim),
        "feed-forward up": (rows * tokens, dim, 4 * dim),
        "feed-forward down": (rows * tokens, 4 * dim, dim),
        "weight gradient (K = tokens)": (dim, rows * tokens, dim),
    }
    for name, (m, k, n) in shapes.items():
        x, w = torch.randn(m, k), torch.randn(k, n)
        seconds = best_cpu(lambda x=x, w=w: x @ w, args.repeats)
        emit(
            "linear",
            shape=name,
            mkn=[m, k, n],
            ms=round(seconds * 1e3, 2),
            fraction_of_gemm=round(2 * m * k * n / seconds / gemm, 2),
        )

    hidden = torch.randn(rows, tokens, 4 * dim) * 2
    for name, f in (
        ("gelu (tanh approximation)", lambda: F.gelu(hidden, approximate="tanh")),
        ("tanh", lambda: torch.tanh(hidden)),
        ("gelu (exact)", lambda: F.gelu(hidden)),
        ("mul", lambda: hidden * hidden),
    ):
        emit("elementwise", op=name, elements=hidden.numel(), ms=round(best_cpu(f, args.repeats) * 1e3, 2))

    q, k, v = (torch.randn(rows, heads, tokens, head_dim) for _ in range(3))
    flops = 4 * rows * heads * tokens * tokens * head_dim

    def explicit() -> torch.Tensor:
        scores = torch.matmul(q, k.transpose(-1, -2)) * head_dim**-0.5
        return torch.matmul(scores.softmax(-1), v)

    for name, f in (
        ("scaled_dot_product_attention", lambda: F.scaled_dot_product_attention(q, k, v)),
        ("explicit", explicit),
    ):
        seconds = best_cpu(f, args.repeats)
        emit("attention", op=name, ms=round(seconds * 1e3, 2), fraction_of_gemm=round(flops / seconds / gemm, 3))

    g = torch.Generator().manual_seed(0)
    channels = model.config.in_channels
    latent = torch.randn(rows, channels, model.config.sample_size, model.config.sample_size, generator=g)
    context = torch.randn(rows, 16, model.config.caption_channels, generator=g)
    t = torch.rand(rows, generator=g) * 1000
    mask = torch.ones(rows, 16)
    mask[:, 10:] = 0

    def forward_backward(module: torch.nn.Module = model) -> None:
        module(latent, context, t, encoder_attention_mask=mask).sample.square().sum().backward()

    def forward() -> None:
        with torch.no_grad():
            model(latent, context, t, encoder_attention_mask=mask)

    from torch.utils.flop_counter import FlopCounterMode

    for name, f in (("forward", forward), ("forward + backward", forward_backward)):
        with FlopCounterMode(display=False) as counter:
            f()
        seconds = best_cpu(f, args.repeats)
        emit(
            "model",
            pass_=name,
            rows=rows,
            cpu_seconds=round(seconds, 4),
            gflop=round(counter.get_total_flops() / 1e9, 2),
            fraction_of_gemm=round(counter.get_total_flops() / seconds / gemm, 3),
            time_by_kind=shares(f),
        )
    if args.compile:
        start = time.process_time()
        compiled = torch.compile(model, dynamic=False)
        forward_backward(compiled)
        compile_seconds = time.process_time() - start
        seconds = best_cpu(lambda: forward_backward(compiled), args.repeats)
        emit(
            "compiled",
            pass_="forward + backward",
            rows=rows,
            cpu_seconds=round(seconds, 4),
            compile_cpu_seconds=round(compile_seconds, 1),
        )


if __name__ == "__main__":
    main()
