"""`pangu-pro bench speed`: decode speed with the KV cache (paper-notes §4 and §1), scaled to the CPU.

Two studies, each a set of randomly initialised models decoding greedily through
`pangu_pro.model.generation.Generator` (prefill once, then one cached step per token):

1. depth x width at a fixed budget of non-embedding parameters: for each depth the hidden size
   (a multiple of the head dim, FFN = 8/3 hidden rounded up to 32) whose count is nearest the budget.
   The paper's finding to reproduce: deeper is slower at equal size.
2. the latency overhead of SIAF and AugShortcut on one shape: vanilla (LLaMA), SIAF, AS, SIAF+AS
   (paper, 1B on its hardware: 7.56 / 7.76 / 7.66 / 7.86 ms).

Per-token latency is the time between consecutive tokens of a batch after the first (one cached
decode step, sampling included); tokens/s counts every sequence of the batch. Each model is warmed
up (both graphs compiled) before timing; the runs of a study are interleaved round robin, each run
gives its median time between tokens, and a model's latency is the best (lowest) of its `repeats`
runs, the one least disturbed by other work on a shared machine (the median is kept beside it).
`run_benchmark(...)` is the CLI-free entry; `add_arguments(parser)` and `run(args)` are for the bench
stage's command line. Results: JSON, two PNGs and a Markdown summary in `out_dir`.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

OUT_DIR = Path("benchmarks/results")
PAPER_MODULE_LATENCY_MS = {"vanilla": 7.56, "siaf": 7.76, "aug_shortcut": 7.66, "siaf+aug_shortcut": 7.86}
VARIANTS = {"vanilla": (False, False), "siaf": (True, False), "aug_shortcut": (False, True),
            "siaf+aug_shortcut": (True, True)}


def shape_config(layers: int, hidden: int, vocab: int, head_dim: int, seq_length: int, siaf: bool = True,
                 aug_shortcut: bool = True):
    from pangu_pro.config import ModelConfig

    ffn = -(-8 * hidden // 3 // 32) * 32
    return ModelConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=hidden // head_dim,
                       intermediate_size=ffn, seq_length=seq_length, siaf=siaf, aug_shortcut=aug_shortcut,
                       aug_shortcut_ratio=32 if hidden % 32 == 0 else 1)


def non_embedding_params(cfg) -> int:
    from pangu_pro.model.params import count_parameters

    count = count_parameters(cfg)
    return count.total - count.embedding - count.lm_head


def width_for_budget(layers: int, budget: int, head_dim: int, vocab: int, seq_length: int) -> int:
    """The hidden size (a multiple of head_dim) whose non-embedding count at `layers` is nearest `budget`."""
    best, best_gap = head_dim, None
    hidden = head_dim
    while True:
        gap = abs(non_embedding_params(shape_config(layers, hidden, vocab, head_dim, seq_length)) - budget)
        if best_gap is not None and gap > best_gap:
            return best
        best, best_gap = hidden, gap
        hidden += head_dim


class DecodeTimer:
    """A randomly initialised model of `cfg`, warmed up (prefill and decode graphs compiled); `measure()`
    times one generation and returns its median per-token latency in seconds."""

    def __init__(self, cfg, batch: int, prompt_length: int, new_tokens: int, seed: int = 0):
        from pangu_pro.model.generation import Generator, SamplingConfig
        from pangu_pro.model.weights import build_model

        model = build_model(cfg, seed=seed)
        model.set_train(False)
        self.generator = Generator(model, max_length=cfg.seq_length)
        self.prompts = np.random.default_rng(seed).integers(3, cfg.vocab_size, size=(batch, prompt_length)).tolist()
        self.sampling = SamplingConfig(max_new_tokens=new_tokens, eos_token_id=None)
        self.batch = batch
        start = time.perf_counter()
        self.generator.generate(self.prompts, SamplingConfig(max_new_tokens=2, eos_token_id=None))
        self.compile_s = time.perf_counter() - start
        self.latencies: list[float] = []
        self.first: list[float] = []

    def measure(self) -> float:
        stamps: list[float] = []
        start = time.perf_counter()
        self.generator.generate(self.prompts, self.sampling, on_token=lambda step, tokens: stamps.append(time.perf_counter()))
        self.first.append(stamps[0] - start)
        self.latencies.append(float(np.median(np.diff(stamps))))
        return self.latencies[-1]

    def summary(self) -> dict:
        latency = min(self.latencies)  # best of the runs: the one least disturbed by other load
        return {"per_token_ms": 1000 * latency, "tokens_per_s": self.batch / latency,
                "median_per_token_ms": 1000 * statistics.median(self.latencies),
                "first_token_ms": 1000 * statistics.median(self.first), "compile_s": self.compile_s,
                "runs_per_token_ms": [1000 * x for x in self.latencies]}


def time_all(configs: Sequence, batch: int, prompt_length: int, new_tokens: int, repeats: int) -> list[dict]:
    """Timings of every config; the runs are interleaved (round robin), so a change of machine load
    during the study affects every config alike."""
    timers = [DecodeTimer(cfg, batch, prompt_length, new_tokens) for cfg in configs]
    for _ in range(repeats):
        for timer in timers:
            timer.measure()
    return [timer.summary() for timer in timers]


def run_benchmark(depths: Sequence[int] = (2, 4, 8, 16, 32), budget: int = 6_000_000, vocab: int = 1024,
                  head_dim: int = 32, batch: int = 4, prompt_length: int = 16, new_tokens: int = 64,
                  repeats: int = 3, module_layers: int = 8, module_hidden: int = 256,
                  out_dir: Optional[str | Path] = OUT_DIR, log=print) -> dict:
    from pangu_pro.runtime import init_mindspore

    init_mindspore()
    seq_length = 1 << (prompt_length + new_tokens - 1).bit_length()
    setting = {"batch": batch, "prompt_length": prompt_length, "new_tokens": new_tokens, "repeats": repeats,
               "vocab": vocab, "head_dim": head_dim, "cache_length": seq_length, "budget_non_embedding": budget,
               "device": "CPU (2 cores), fp32, graph mode"}
    depth_configs = [shape_config(layers, width_for_budget(layers, budget, head_dim, vocab, seq_length), vocab,
                                  head_dim, seq_length) for layers in depths]
    depth_rows = []
    for cfg, timing in zip(depth_configs, time_all(depth_configs, batch, prompt_length, new_tokens, repeats)):
        row = {"layers": cfg.num_layers, "hidden": cfg.hidden_size, "ffn": cfg.intermediate_size,
               "heads": cfg.num_heads, "non_embedding_params": non_embedding_params(cfg), **timing}
        log(f"depth {row['layers']:>3} x width {row['hidden']:>4}: {row['per_token_ms']:.2f} ms/token, "
            f"{row['tokens_per_s']:.1f} tokens/s ({row['non_embedding_params']:,} params)")
        depth_rows.append(row)
    module_configs = [shape_config(module_layers, module_hidden, vocab, head_dim, seq_length, siaf, aug)
                      for siaf, aug in VARIANTS.values()]
    module_rows = []
    for name, cfg, timing in zip(VARIANTS, module_configs,
                                 time_all(module_configs, batch, prompt_length, new_tokens, repeats)):
        module_rows.append({"variant": name, "layers": module_layers, "hidden": module_hidden,
                            "non_embedding_params": non_embedding_params(cfg), **timing})
    base = module_rows[0]["per_token_ms"]
    for row in module_rows:
        row["overhead_pct"] = 100 * (row["per_token_ms"] / base - 1)
        row["paper_ms"] = PAPER_MODULE_LATENCY_MS[row["variant"]]
        row["paper_overhead_pct"] = 100 * (row["paper_ms"] / PAPER_MODULE_LATENCY_MS["vanilla"] - 1)
        log(f"{row['variant']:<18} {row['per_token_ms']:.2f} ms/token ({row['overhead_pct']:+.1f}%, "
            f"paper {row['paper_overhead_pct']:+.1f}%)")
    results = {"setting": setting, "depth_width": depth_rows, "modules": module_rows}
    if out_dir is not None:
        write_results(results, Path(out_dir))
    return results


def depth_figure(results: dict):
    """Tokens/s and ms/token against the number of layers (equal non-embedding parameters)."""
    from pangu_pro.plotting import new_figure

    s, rows = results["setting"], results["depth_width"]
    fig, (speed_ax, latency_ax) = new_figure(1, 2, f"Decode speed by depth at ~{s['budget_non_embedding'] / 1e6:.1f}M "
                                                   f"non-embedding parameters ({s['device']}, batch {s['batch']})")
    depths = [r["layers"] for r in rows]
    speed_ax.plot(depths, [r["tokens_per_s"] for r in rows], color="C0", marker="o", label="tokens/s")
    latency_ax.plot(depths, [r["per_token_ms"] for r in rows], color="C3", marker="o", label="ms/token (best run)")
    for ax, name, ylabel in ((speed_ax, "Throughput", "tokens/s"), (latency_ax, "Latency", "ms per token")):
        ax.set_title(name)
        ax.set_xlabel("layers (width shrinks to keep the parameters)")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.legend(fontsize="small")
    return fig


def modules_figure(results: dict):
    """ms/token per PanGu-pi module variant, as bars."""
    from pangu_pro.plotting import new_figure

    rows = results["modules"]
    fig, (ax,) = new_figure(1, 1, f"Module overhead ({rows[0]['layers']} layers x {rows[0]['hidden']})")
    ax.bar([r["variant"] for r in rows], [r["per_token_ms"] for r in rows], color=["0.5", "C2", "C0", "C3"][:len(rows)])
    ax.set_xlabel("variant")
    ax.set_ylabel("ms per token")
    ax.set_title("Decode latency per variant")
    return fig


def write_results(results: dict, out_dir: Path) -> None:
    from pangu_pro.io import atomic_write_json, atomic_write_text
    from pangu_pro.plotting import save_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "speed.json", results)
    save_figure(depth_figure(results), out_dir / "speed_depth.png")
    save_figure(modules_figure(results), out_dir / "speed_modules.png")
    atomic_write_text(out_dir / "speed.md", speed_markdown(results))


def speed_markdown(results: dict) -> str:
    s = results["setting"]
    lines = ["# Decode speed (`pangu-pro bench speed`)", "",
             f"Greedy decoding with the static KV cache on {s['device']}: batch {s['batch']}, prompt "
             f"{s['prompt_length']} tokens, {s['new_tokens']} new tokens, cache {s['cache_length']}, vocab "
             f"{s['vocab']}, head dim {s['head_dim']}; best of {s['repeats']} interleaved runs of the median time "
             "between tokens (median of the runs in parentheses). Random weights (speed does not depend on "
             "them). On a shared machine other jobs add noise of tens of percent to single runs "
             "(`runs_per_token_ms` in speed.json has them all): differences of a few percent, such as the "
             "paper's SIAF and AugShortcut overheads, are below what this setting resolves.", ""]
    rows = results["depth_width"]
    sizes = [r["non_embedding_params"] / 1e6 for r in rows]
    lines += [f"## Depth x width at {min(sizes):.2f}M–{max(sizes):.2f}M non-embedding parameters", "",
              f"Each depth takes the hidden size (a multiple of the head dim) nearest a budget of "
              f"{s['budget_non_embedding'] / 1e6:.1f}M, so the rows' sizes differ by up to "
              f"{max(sizes) / min(sizes) - 1:.0%}: the last column divides the latency by the size.", "",
              "| layers | hidden | ffn | params (non-emb.) | ms/token | tokens/s | first token ms | compile s | "
              "ms/token per M params |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r, size in zip(rows, sizes):
        lines.append(f"| {r['layers']} | {r['hidden']} | {r['ffn']} | {size:.2f}M | "
                     f"{r['per_token_ms']:.2f} ({r['median_per_token_ms']:.2f}) | {r['tokens_per_s']:.1f} | "
                     f"{r['first_token_ms']:.1f} | {r['compile_s']:.1f} | {r['per_token_ms'] / size:.2f} |")
    slow = max(rows, key=lambda r: r["per_token_ms"])
    fast = min(rows, key=lambda r: r["per_token_ms"])
    monotone = all(a["per_token_ms"] < b["per_token_ms"] for a, b in zip(rows, rows[1:]))
    lines += ["", f"Deepest/shallowest per-token latency: {rows[-1]['per_token_ms'] / rows[0]['per_token_ms']:.2f}x "
              f"({'strictly increasing with depth' if monotone else 'not strictly monotone'}; fastest "
              f"{fast['layers']} x {fast['hidden']}, slowest {slow['layers']} x {slow['hidden']}). The paper: depth "
              "20 x width 1792 decodes at 29.49 tokens/s (V100, fp16, batch 20) and deeper is slower at equal "
              "size.", "", "`speed_depth.png`: tokens/s (left) and ms/token (right) against the number of layers.",
              "", f"## SIAF and AugShortcut overhead ({results['modules'][0]['layers']} layers x "
              f"{results['modules'][0]['hidden']})", "",
              "| variant | params (non-emb.) | ms/token | overhead | paper ms (1B) | paper overhead |",
              "|---|---|---|---|---|---|"]
    for r in results["modules"]:
        lines.append(f"| {r['variant']} | {r['non_embedding_params'] / 1e6:.2f}M | {r['per_token_ms']:.2f} "
                     f"({r['median_per_token_ms']:.2f}) | "
                     f"{r['overhead_pct']:+.1f}% | {r['paper_ms']:.2f} | {r['paper_overhead_pct']:+.1f}% |")
    lines += ["", "`speed_modules.png`: ms/token per variant, left to right vanilla (grey), SIAF (green), "
              "AugShortcut (blue), both (red).", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `pangu-pro bench speed`."""
    parser.add_argument("--depths", default="2,4,8,16,32", help="comma-separated layer counts")
    parser.add_argument("--budget", type=float, default=6e6, help="non-embedding parameters of every depth's model")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--module-layers", type=int, default=8, help="shape of the SIAF / AugShortcut study")
    parser.add_argument("--module-hidden", type=int, default=256)
    parser.add_argument("--out-dir", default=str(OUT_DIR))


def run(args: argparse.Namespace) -> int:
    try:
        depths = [int(d) for d in args.depths.split(",") if d.strip()]
    except ValueError:
        raise ValueError(f"--depths must be comma-separated integers, got {args.depths!r}") from None
    if not depths or min(depths) < 1 or args.new_tokens < 3 or args.repeats < 1 or args.batch < 1:
        raise ValueError("need depths >= 1, --new-tokens >= 3, --repeats >= 1 and --batch >= 1")
    if args.module_hidden % args.head_dim:
        raise ValueError(f"--module-hidden {args.module_hidden} is not a multiple of --head-dim {args.head_dim}")
    run_benchmark(depths, int(args.budget), args.vocab, args.head_dim, args.batch, args.prompt_length,
                  args.new_tokens, args.repeats, args.module_layers, args.module_hidden, args.out_dir)
    print(f"wrote {Path(args.out_dir) / 'speed.json'}, speed.md, speed_depth.png, speed_modules.png")
    return 0
