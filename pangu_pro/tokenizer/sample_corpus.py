"""A small, deterministic mixed-language corpus for tests and the tokenizer benchmark.

English prose comes from Python standard-library docstrings, code from standard-library source
lines, and Chinese from sentences built out of a fixed phrase list; emoji are sprinkled in. No
download is needed, and the same seed always gives the same lines.
"""
from __future__ import annotations

import inspect
import random
from pathlib import Path

_MODULES = ("os", "re", "json", "collections", "argparse", "pathlib", "textwrap", "functools", "itertools",
            "subprocess", "typing", "dataclasses", "logging", "shutil", "tempfile", "string", "heapq",
            "statistics", "fractions", "decimal", "datetime", "calendar", "csv", "zipfile", "tarfile",
            "inspect", "ast", "threading", "queue", "socket", "email.message", "http.client", "urllib.parse")

_CHINESE = ("我们", "今天", "天气", "很好", "模型", "训练", "数据", "语言", "中文", "分词器", "压缩", "词表",
            "参数", "计算", "学习", "研究", "方法", "问题", "结果", "实验", "北京", "上海", "学生", "老师",
            "喜欢", "阅读", "书籍", "电脑", "程序", "开发", "系统", "网络", "时间", "世界", "人工智能", "大模型",
            "小模型", "性能", "提升", "效率", "因为", "所以", "但是", "如果", "可以", "没有", "非常", "重要")
_PUNCT = ("，", "。", "！", "？", "、", "：")
_EMOJI = ("😀", "🚀", "👍", "🎉", "🔥", "🤖", "✨", "🌏")


def _docstrings() -> list[str]:
    import importlib

    lines: list[str] = []
    for name in _MODULES:
        module = importlib.import_module(name)
        objects = [module] + [getattr(module, a) for a in sorted(dir(module)) if not a.startswith("_")]
        for obj in objects:
            doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None
            if doc:
                lines.extend(line.strip() for line in doc.splitlines() if len(line.strip()) > 20)
    return list(dict.fromkeys(lines))


def _code_lines() -> list[str]:
    import importlib

    lines: list[str] = []
    for name in _MODULES[:12]:
        try:
            source = inspect.getsource(importlib.import_module(name))
        except (OSError, TypeError):
            continue
        lines.extend(line.rstrip() for line in source.splitlines() if len(line.strip()) > 10)
    return list(dict.fromkeys(lines))


def chinese_line(rng: random.Random) -> str:
    words = [rng.choice(_CHINESE) for _ in range(rng.randint(4, 14))]
    text = "".join(w + (rng.choice(_PUNCT) if rng.random() < 0.2 else "") for w in words)
    return text + rng.choice(("。", "！", "？"))


def mixed_lines(n: int, seed: int = 0) -> list[str]:
    """`n` lines: about half English prose, a quarter code, a fifth Chinese, some emoji and mixtures."""
    rng = random.Random(seed)
    prose, code = _docstrings(), _code_lines()
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.5:
            line = rng.choice(prose)
        elif r < 0.75:
            line = rng.choice(code)
        elif r < 0.95:
            line = chinese_line(rng)
        else:
            line = f"{rng.choice(prose)[:40]} {chinese_line(rng)} {rng.choice(_EMOJI)} {rng.randint(0, 99999)}"
        out.append(line)
    return out


def write_corpus(path: str | Path, n: int, seed: int = 0) -> Path:
    """Write `mixed_lines(n, seed)` to `path`, one line each."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(mixed_lines(n, seed)) + "\n", encoding="utf-8")
    return path
