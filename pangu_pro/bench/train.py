"""`pangu-pro bench train`: training-step throughput against two peer implementations (not a timed test).

What is measured, on one machine in one run, with the same shapes for everyone:
  * the machine's fp32 matmul peak: a compiled MindSpore loop of [n, n] x [n, n] matmuls,
    2 n^3 FLOPs each, the best of a few repeats;
  * our training step (`pangu_pro.train.step.TrainStep`: forward, backward, global-norm clip, AdamW)
    on `tiny_cpu` (PanGu-pi modules on) and on a 23M LLaMA shape (hidden 384, 6 layers, 6 heads,
    FFN 1024, vocab 16k, seq 256, batch 4), the latter with the PanGu-pi modules off (= LLaMA) and on;
  * peers on the 23M LLaMA shape: MindFormers' legacy `LlamaForCausalLM` (fp32, unfused kernels)
    under `nn.TrainOneStepCell` with MindFormers' AdamW (no clipping: less work than ours), and
    Hugging Face's `LlamaForCausalLM` in PyTorch fp32 (sdpa attention) with `torch.optim.AdamW` and
    `clip_grad_norm_`, with PyTorch's default threads and with one thread (the faster counts);
  * data loading: batches/s of `create_dataset` over MindRecord shards vs what a step consumes.

Step time = median of `--steps` timed steps after `--warmup` untimed ones (compile excluded). Each
measurement runs in a fresh subprocess (so MindSpore's and PyTorch's thread pools never share one);
the peer comparison alternates the three implementations for `--rounds` rounds and keeps each one's
fastest round, since the machine may be shared.
FLOPs per token = 6 * N_matmul + 12 * L * S * H * D_h (`pangu_pro.train.metrics`), the same formula
for every implementation; achieved FLOP/s = FLOPs per token * tokens/s; MFU against the measured peak.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path("benchmarks/results/train.json")
LLAMA_23M = dict(vocab_size=16000, hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1024,
                 seq_length=256)
REFERENCE = {"mindformers_s_per_step": 1.2, "pytorch_s_per_step": 0.8,
             "note": "issue 3: 23M LLaMA, seq 256, batch 4, 2 cores; target >= 1.2x MindFormers, >= 1.0x PyTorch"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=8, help="timed steps per implementation (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--batch", type=int, default=4, help="batch size of the 23M comparison")
    parser.add_argument("--tiny-batch", type=int, default=8, help="batch size for tiny_cpu")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the peer comparison")
    parser.add_argument("--skip", nargs="*", default=[], choices=["mindformers", "pytorch", "pangu", "tiny", "data"],
                        help="parts to leave out")
    parser.add_argument("--out", default=str(RESULTS), help="results JSON")


def _median_step(fn, steps: int, warmup: int) -> dict:
    began = time.perf_counter()
    fn()
    compile_s = time.perf_counter() - began
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return {"s_per_step": statistics.median(times), "min_s": min(times), "first_call_s": compile_s}


def bench_ours(model_cfg, batch: int, steps: int, warmup: int) -> dict:
    from mindspore import Tensor

    from pangu_pro.config import TrainConfig
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.weights import build_model
    from pangu_pro.train.optim import build_optimizer
    from pangu_pro.train.step import TrainStep

    model = build_model(model_cfg, seed=0)
    step = TrainStep(PanGuPiWithLoss(model), build_optimizer(model.trainable_params(), TrainConfig()), grad_clip=1.0)
    ids = Tensor(np.random.default_rng(0).integers(0, model_cfg.vocab_size, (batch, model_cfg.seq_length + 1),
                                                   dtype=np.int32))
    return _median_step(lambda: step([ids], 1e-4), steps, warmup)


def bench_mindformers(model_cfg, batch: int, steps: int, warmup: int) -> dict:
    os.environ.setdefault("LOG_MF_PATH", os.path.join(tempfile.gettempdir(), "pangu-pro-mf-log"))  # not ./output
    from mindformers import LlamaConfig, LlamaForCausalLM
    from mindformers.core.optim import AdamW
    from mindspore import Tensor, nn

    peer_cfg = LlamaConfig(batch_size=batch, seq_length=model_cfg.seq_length, hidden_size=model_cfg.hidden_size,
                           num_layers=model_cfg.num_layers, num_heads=model_cfg.num_heads,
                           n_kv_heads=model_cfg.num_kv_heads, intermediate_size=model_cfg.intermediate_size,
                           vocab_size=model_cfg.vocab_size, rms_norm_eps=1e-5, theta=10000.0,
                           compute_dtype="float32", layernorm_compute_type="float32", softmax_compute_type="float32",
                           rotary_dtype="float32", param_init_type="float32", use_rope_slice=True,
                           fused_rms_norm=False, use_flash_attention=False, use_past=False)
    net = LlamaForCausalLM(peer_cfg)
    net.set_train(True)
    step = nn.TrainOneStepCell(net, AdamW(net.trainable_params(), learning_rate=1e-4, betas=(0.9, 0.95),
                                          weight_decay=0.1))
    step.set_train(True)
    ids = Tensor(np.random.default_rng(0).integers(0, model_cfg.vocab_size, (batch, model_cfg.seq_length + 1),
                                                   dtype=np.int32))
    return _median_step(lambda: step(ids).asnumpy(), steps, warmup)


def bench_pytorch(model_cfg, batch: int, steps: int, warmup: int, threads: int = 0) -> dict:
    """`threads` 0 = PyTorch's default (one per core). Under a loaded machine its OpenMP pool can be
    much slower than one thread, so the benchmark measures both and compares with the faster."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.hidden_size,
                      intermediate_size=model_cfg.intermediate_size, num_hidden_layers=model_cfg.num_layers,
                      num_attention_heads=model_cfg.num_heads, num_key_value_heads=model_cfg.kv_heads,
                      max_position_embeddings=model_cfg.seq_length, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=False, torch_dtype="float32")
    model = LlamaForCausalLM(cfg).float().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, model_cfg.vocab_size,
                                                             (batch, model_cfg.seq_length + 1))).long()

    def one():
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss  # HF shifts labels inside
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return {**_median_step(one, steps, warmup), "torch_threads": torch.get_num_threads(),
            "attn_implementation": model.config._attn_implementation}


def bench_data(batch: int, seq: int, batches: int = 200) -> dict:
    """Batches/s of the training loader over 4 MindRecord shards of random tokens."""
    from mindspore.mindrecord import FileWriter

    from pangu_pro.data.dataset import create_dataset

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.mindrecord")
        writer = FileWriter(path, shard_num=4, overwrite=True)
        writer.add_schema({"input_ids": {"type": "int32", "shape": [-1]}}, "tokens")
        rows = np.random.default_rng(0).integers(0, 16000, (batches * batch, seq + 1), dtype=np.int32)
        writer.write_raw_data([{"input_ids": r} for r in rows])
        writer.commit()
        files = [os.path.join(tmp, f"data.mindrecord{i}") for i in range(4)]
        dataset = create_dataset(files, batch, shuffle=True, seed=0)
        began = time.perf_counter()
        count = sum(1 for _ in dataset.create_tuple_iterator(num_epochs=1))
        elapsed = time.perf_counter() - began
    return {"batches": count, "batch": batch, "seq": seq, "batches_per_s": count / elapsed,
            "tokens_per_s": count * batch * seq / elapsed}


def _entry(name: str, model_cfg, batch: int, timing: dict, peak: float) -> dict:
    from pangu_pro.train.metrics import train_flops_per_token

    flops_per_token = train_flops_per_token(model_cfg, model_cfg.seq_length)
    tokens_per_s = batch * model_cfg.seq_length / timing["s_per_step"]
    return {"name": name, "batch": batch, "seq": model_cfg.seq_length, **timing, "tokens_per_s": tokens_per_s,
            "flops_per_token": flops_per_token, "achieved_flops_per_s": flops_per_token * tokens_per_s,
            "mfu": flops_per_token * tokens_per_s / peak}


WORKERS = {"ours": bench_ours, "mindformers": bench_mindformers, "pytorch": bench_pytorch,
           "pytorch_1thread": lambda *a: bench_pytorch(*a, threads=1)}


def _model_config(shape: str, pangu: bool):
    from pangu_pro.config import ModelConfig, load_config

    if shape == "tiny_cpu":
        return load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml").model
    return ModelConfig(**LLAMA_23M, siaf=pangu, aug_shortcut=pangu)


def worker(kind: str, shape: str, pangu: bool, batch: int, steps: int, warmup: int) -> dict:
    """One measurement in this process (the benchmark runs each in a fresh subprocess)."""
    from pangu_pro.runtime import init_mindspore

    init_mindspore()
    if kind == "peak":
        from pangu_pro.train.metrics import matmul_peak

        return matmul_peak()
    if kind == "data":
        return bench_data(batch, LLAMA_23M["seq_length"])
    return WORKERS[kind](_model_config(shape, pangu), batch, steps, warmup)


def _in_subprocess(kind: str, shape: str = "llama23m", pangu: bool = False, batch: int = 4, steps: int = 8,
                   warmup: int = 2) -> dict:
    import subprocess
    import sys

    env = {**os.environ, "GLOG_v": "3"}
    env.setdefault("LOG_MF_PATH", os.path.join(tempfile.gettempdir(), "pangu-pro-mf-log"))
    code = ("import json, sys; from pangu_pro.bench.train import worker; "
            f"print('RESULT ' + json.dumps(worker({kind!r}, {shape!r}, {pangu!r}, {batch}, {steps}, {warmup})))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {kind}/{shape} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def run_benchmark(steps: int = 8, warmup: int = 2, batch: int = 4, tiny_batch: int = 8, rounds: int = 3,
                  skip=(), announce=print) -> dict:
    """Every measurement in its own subprocess; the peer comparison alternates ours / MindFormers /
    PyTorch for `rounds` rounds and keeps each implementation's fastest round (the machine is shared)."""
    from pangu_pro.train.metrics import record_cpu_peak

    peak = _in_subprocess("peak")
    record_cpu_peak(peak)  # MFU of training runs on this machine uses the higher of this and earlier runs
    announce(f"fp32 matmul peak: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s")
    llama = _model_config("llama23m", False)
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "load_average_at_start": os.getloadavg()},
               "peak": peak, "reference": REFERENCE, "flops_formula": "6 * N_matmul + 12 * L * S * H * D_h per token",
               "runs": []}

    def record(name, cfg, b, timing):
        entry = _entry(name, cfg, b, timing, peak["flops_per_s"])
        results["runs"].append(entry)
        announce(f"{name}: {entry['s_per_step']:.3f} s/step, {entry['tokens_per_s']:.0f} tokens/s, "
                 f"{entry['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s, MFU {entry['mfu']:.1%}")
        return entry

    contenders = [("ours_llama23m", "ours")]
    if "mindformers" not in skip:
        contenders.append(("mindformers_llama23m", "mindformers"))
    if "pytorch" not in skip:
        contenders += [("pytorch_hf_llama23m", "pytorch"), ("pytorch_hf_llama23m_1thread", "pytorch_1thread")]
    rounds_seen: dict[str, list[dict]] = {name: [] for name, _ in contenders}
    for r in range(rounds):
        for name, kind in contenders:
            timing = _in_subprocess(kind, "llama23m", False, batch, steps, warmup)
            rounds_seen[name].append(timing)
            announce(f"  round {r + 1} {name}: {timing['s_per_step']:.3f} s/step (load {os.getloadavg()[0]:.1f})")
    best = {}
    for name, _ in contenders:
        timing = min(rounds_seen[name], key=lambda t: t["s_per_step"])
        best[name] = record(name, llama, batch, {**timing, "rounds_s_per_step": [t["s_per_step"]
                                                                                 for t in rounds_seen[name]]})
    if "pangu" not in skip:
        record("ours_pangu23m", _model_config("llama23m", True), batch,
               _in_subprocess("ours", "llama23m", True, batch, steps, warmup))
    if "tiny" not in skip:
        record("ours_tiny_cpu", _model_config("tiny_cpu", True), tiny_batch,
               _in_subprocess("ours", "tiny_cpu", True, tiny_batch, steps, warmup))
    ours = best["ours_llama23m"]
    ratios = {}
    if "mindformers_llama23m" in best:
        ratios["speedup_vs_mindformers"] = best["mindformers_llama23m"]["s_per_step"] / ours["s_per_step"]
    if "pytorch_hf_llama23m" in best:  # against the faster PyTorch thread setting
        fastest = min(best["pytorch_hf_llama23m"]["s_per_step"], best["pytorch_hf_llama23m_1thread"]["s_per_step"])
        ratios["speedup_vs_pytorch"] = fastest / ours["s_per_step"]
    results["ratios"] = ratios
    if "data" not in skip:
        data = _in_subprocess("data", batch=batch)
        data["consumed_batches_per_s"] = 1.0 / ours["s_per_step"]
        data["headroom"] = data["batches_per_s"] * ours["s_per_step"]
        results["data_loading"] = data
        announce(f"data loading: {data['batches_per_s']:.0f} batches/s = {data['headroom']:.0f}x what a step uses")
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["note"] = ("shared 2-core machine (other engineers' jobs ran at the same time; see the load averages "
                       "and the per-round times): absolute times are noisy; each implementation keeps its fastest "
                       "of the alternating rounds")
    for key, value in ratios.items():
        announce(f"{key}: {value:.2f}x")
    return results


def run(args: argparse.Namespace) -> int:
    results = run_benchmark(args.steps, args.warmup, args.batch, args.tiny_batch, args.rounds, set(args.skip))
    out = Path(args.out)
    from pangu_pro.io import atomic_write_json

    atomic_write_json(out, results)
    print(f"results: {out}")
    return 0
