"""`pangu-pro bench speed`: shapes at a fixed budget, the timer on a tiny model, the written results."""
import json

import numpy as np
import pytest

from pangu_pro.bench import speed


def test_shape_config_and_width_for_budget():
    cfg = speed.shape_config(8, 256, 1024, 32, 128)
    assert (cfg.intermediate_size, cfg.num_heads, cfg.aug_shortcut_dim) == (704, 8, 8)  # ceil(8*256/3) up to 32
    for layers in (2, 8, 32):
        chosen = speed.width_for_budget(layers, 6_000_000, 32, 1024, 128)
        gaps = {h: abs(speed.non_embedding_params(speed.shape_config(layers, h, 1024, 32, 128)) - 6_000_000)
                for h in range(32, 1025, 32)}
        assert chosen == min(gaps, key=gaps.get)
    assert [speed.width_for_budget(n, 6_000_000, 32, 1024, 128) for n in (2, 4, 8, 16, 32)] == [512, 352, 256, 160, 128]
    # the embedding is not counted
    assert speed.non_embedding_params(cfg) == speed.non_embedding_params(speed.shape_config(8, 256, 50, 32, 128))


def test_decode_timer_on_a_tiny_model():
    from pangu_pro.runtime import init_mindspore

    init_mindspore()
    timer = speed.DecodeTimer(speed.shape_config(1, 32, 64, 16, 32), batch=2, prompt_length=5, new_tokens=6)
    steps = timer.generator.steps[2]
    assert len(steps.compile_cache) == 2  # prefill and decode, compiled during the warm-up
    latency = timer.measure()
    timer.measure()
    assert len(steps.compile_cache) == 2  # timing runs compile nothing
    summary = timer.summary()
    assert 0 < latency < 5 and len(summary["runs_per_token_ms"]) == 2
    assert summary["per_token_ms"] == pytest.approx(1000 * min(latency, timer.latencies[1]))
    assert summary["median_per_token_ms"] == pytest.approx(1000 * float(np.median([latency, timer.latencies[1]])))
    assert summary["tokens_per_s"] == pytest.approx(2000 / summary["per_token_ms"])


def test_results_files(tmp_path):
    depth = [{"layers": n, "hidden": h, "ffn": 3 * h, "heads": h // 32, "non_embedding_params": 10 ** 6,
              "per_token_ms": ms, "median_per_token_ms": ms + 1, "tokens_per_s": 4000 / ms, "first_token_ms": 2 * ms, "compile_s": 1.0,
              "runs_per_token_ms": [ms]} for n, h, ms in [(2, 512, 3.0), (8, 256, 6.0)]]
    modules = [{"variant": v, "layers": 8, "hidden": 256, "non_embedding_params": 10 ** 6, "per_token_ms": ms,
                "median_per_token_ms": ms + 1,
                "overhead_pct": 100 * (ms / 5.0 - 1), "paper_ms": speed.PAPER_MODULE_LATENCY_MS[v],
                "paper_overhead_pct": 100 * (speed.PAPER_MODULE_LATENCY_MS[v] / 7.56 - 1)}
               for v, ms in zip(speed.VARIANTS, [5.0, 5.5, 5.25, 6.0])]
    results = {"setting": {"batch": 4, "prompt_length": 16, "new_tokens": 64, "repeats": 3, "vocab": 1024,
                           "head_dim": 32, "cache_length": 128, "budget_non_embedding": 10 ** 6, "device": "CPU"},
               "depth_width": depth, "modules": modules}
    speed.write_results(results, tmp_path)
    assert json.loads((tmp_path / "speed.json").read_text()) == results
    for name in ("speed_depth.png", "speed_modules.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "speed.md").read_text()
    assert "| 8 | 256 | 768 | 1.00M | 6.00 (7.00) | 666.7 | 12.0 | 1.0 | 6.00 |" in md
    assert "Deepest/shallowest per-token latency: 2.00x (strictly increasing with depth" in md
    assert "| siaf | 1.00M | 5.50 (6.50) | +10.0% | 7.76 | +2.6% |" in md
    speed_ax, latency_ax = speed.depth_figure(results).axes
    assert (speed_ax.get_xlabel(), latency_ax.get_ylabel()) == ("layers (width shrinks to keep the parameters)",
                                                               "ms per token")
    assert list(latency_ax.lines[0].get_ydata()) == [3.0, 6.0]
    (bars,) = speed.modules_figure(results).axes
    assert [p.get_height() for p in bars.patches] == [5.0, 5.5, 5.25, 6.0]
