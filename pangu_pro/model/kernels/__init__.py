"""Fused C++ kernels for the CPU, as MindSpore `Custom` "aot" operators.

Why our own kernels: MindSpore 2.9 fuses element-wise chains on Ascend (its graph kernels), but not on
the CPU (`enable_graph_kernel` fails to compile there, docs/design.md). As primitives, SIAF is
4n - 1 passes (7 for n = 2) over the FFN's [B, T, F] activations forward and 4n reductions over rows
backward, each its own kernel: at the 23M shape it cost +18% forward and +28% per training step
(both modules), against +2.6% in the paper. `siaf.cc` computes it in one pass each way.

The library is compiled with g++ on first use into a cache folder (`PANGU_PRO_KERNEL_CACHE`, default
`~/.cache/pangu_pro/kernels`), keyed by the source, the flags and this CPU's model and flags
(`-march=native`), written atomically. Without a compiler, or with `PANGU_PRO_CPU_KERNELS=0`, the
cells use the primitives (same numbers up to fp32 rounding) and say so once. Ascend never uses these.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Optional

SOURCE_DIR = Path(__file__).parent
DISABLE_ENV = "PANGU_PRO_CPU_KERNELS"  # 0: always the primitives
CACHE_ENV = "PANGU_PRO_KERNEL_CACHE"
COMPILER_ENV = "CXX"
# No -ffast-math: its shortcuts broke SIAF at large |z|, and linking with it adds crtfastmath.o, which
# switches the whole process to flush-to-zero. siaf.cc declares glibc's vectorised expf itself;
# -fno-math-errno lets gcc call it.
COMPILE_FLAGS = ("-std=c++17", "-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-fPIC")
LINK_FLAGS = ("-shared", "-fopenmp")


def _cpu_signature() -> str:
    """The CPU's model and feature flags: a library built with -march=native runs only on such CPUs."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))][:2]
    return platform.machine() + "\n" + "\n".join(keep)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pangu_pro" / "kernels")


def compile_library(name: str, compiler: Optional[str] = None) -> Path:
    """`name`.cc of this folder as a shared library in the cache (compiled once per source, flags and
    CPU); raises RuntimeError naming the compiler and its output if compilation fails."""
    source = SOURCE_DIR / f"{name}.cc"
    compiler = compiler or os.environ.get(COMPILER_ENV) or "g++"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set {COMPILER_ENV})")
    key = hashlib.sha256("\n".join([source.read_text(), *COMPILE_FLAGS, *LINK_FLAGS, _cpu_signature()])
                         .encode()).hexdigest()[:16]
    target = cache_dir() / f"{name}-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / f"{name}.o", Path(tmp) / f"{name}.so"
        for cmd in ([compiler, *COMPILE_FLAGS, "-c", str(source), "-o", str(obj)],
                    [compiler, *LINK_FLAGS, str(obj), "-o", str(lib)]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        try:  # e.g. a C library without the vectorised expf: better refused here than when MindSpore loads it
            ctypes.CDLL(str(lib))
        except OSError as err:
            raise RuntimeError(f"{lib.name} compiled but does not load: {err}") from None
        os.replace(lib, target)  # atomic: another process may be compiling the same library
    return target


@functools.lru_cache(maxsize=None)
def _library(name: str) -> Optional[Path]:
    if os.environ.get(DISABLE_ENV, "1").strip() == "0":
        return None
    try:
        return compile_library(name)
    except (RuntimeError, OSError) as err:
        warnings.warn(f"CPU kernel {name}.cc unavailable, using MindSpore primitives instead (slower): {err}",
                      RuntimeWarning, stacklevel=3)
        return None


def siaf_op():
    """The fused SIAF operator y = op(x, scale, bias) with its backward, or None (use the primitives).
    Only on the CPU; the caller checks the device and dtype (float32)."""
    library = _library("siaf")
    if library is None:
        return None
    from mindspore import ops

    backward = ops.Custom(f"{library}:SiafBackward", out_shape=lambda x, a, b, dy: (x, a, b),
                          out_dtype=lambda x, a, b, dy: (x, a, b), func_type="aot")

    def bprop(x, scale, bias, out, dout):
        return backward(x, scale, bias, dout)

    return ops.Custom(f"{library}:SiafForward", out_shape=lambda x, a, b: x, out_dtype=lambda x, a, b: x,
                      func_type="aot", bprop=bprop)
