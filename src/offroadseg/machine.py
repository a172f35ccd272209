"""What this machine is and what its arithmetic units deliver: CPU model, cores, the flags that decide the
fast path (bf16 / VNNI / AMX on x86, NEON / SVE on ARM), measured GEMM throughput, and the GPU if any.

Printed by ``offroadseg doctor --machine``; a timing table is only comparable with another taken on the
same flags.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

__all__ = [
    "FLAGS_OF_INTEREST",
    "cpu_info",
    "cpu_pass_precision",
    "gemm_peaks",
    "header_lines",
    "machine_report",
    "native_bf16",
]

# x86 flags (as /proc/cpuinfo spells them) and ARM features that change which kernels are fast.
FLAGS_OF_INTEREST = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "asimd",  # NEON on aarch64
    "sve",
    "sve2",
    "bf16",  # aarch64 BF16 instructions
    "i8mm",
)


def _cpuinfo_text() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text(errors="replace") if path.is_file() else ""


def cpu_info(text: str | None = None) -> dict:
    """CPU model, logical cores, the flags of interest this CPU has, and whether bf16 is native.

    Args:
        text: the contents of ``/proc/cpuinfo`` (read from the machine when None; tests pass their own).
    """
    text = _cpuinfo_text() if text is None else text
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model is None:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return {
        "model": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
        "native_bf16": native_bf16(flags),
        "int8_dot": any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8", "i8mm")),
    }


def native_bf16(flags: set[str] | list[str]) -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16 on x86; BF16 on ARM)."""
    flags = set(flags)
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_pass_precision(precision: str, flags: set[str] | list[str] | None = None) -> str:
    """The frozen backbone pass's precision on this CPU for a config's ``train.precision``.

    ``auto`` (and its alias ``amp``): ``bf16`` where the CPU computes bf16 natively, else ``fp32``
    (emulated bf16 is slower than fp32); an explicit ``bf16``: ``bf16``; anything else: ``fp32``.
    Training under ``auto`` follows ``training.hardware.resolve_precision`` (bf16 only for heavy models).

    Args:
        precision: ``train.precision`` as written in the config.
        flags: the CPU's flags (default: this machine's; tests pass their own).
    """
    key = str(precision)
    if key == "bf16" or key == "bf16-mixed":
        return "bf16"
    if key not in ("auto", "amp"):
        return "fp32"
    flags = cpu_info()["flags"] if flags is None else flags
    return "bf16" if native_bf16(flags) else "fp32"


def _gflops(fn, flop: float, seconds: float) -> float:
    fn()  # warm-up (kernel selection, allocation)
    runs, start = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return flop * runs / elapsed / 1e9


def gemm_peaks(n: int = 1024, seconds: float = 0.5) -> dict:
    """Measured matrix-multiply throughput in GFLOP/s (GOP/s for int8) with torch's current threads.

    fp32 and bf16 ``n x n @ n x n`` (``2 n^3`` operations); int8 through ``torch._int_mm`` where this
    torch build has it on the CPU (None otherwise).
    """
    import torch  # noqa: PLC0415 (heavy; only when measuring)

    flop = 2.0 * n**3
    out: dict = {"n": n, "threads": torch.get_num_threads()}
    with torch.no_grad():
        a = torch.randn(n, n)
        b = torch.randn(n, n)
        out["fp32_gflops"] = _gflops(lambda: a @ b, flop, seconds)
        a16, b16 = a.bfloat16(), b.bfloat16()
        out["bf16_gflops"] = _gflops(lambda: a16 @ b16, flop, seconds)
        try:
            a8 = torch.randint(-128, 127, (n, n), dtype=torch.int8)
            b8 = torch.randint(-128, 127, (n, n), dtype=torch.int8)
            out["int8_gops"] = _gflops(lambda: torch._int_mm(a8, b8), flop, seconds)
        except (RuntimeError, AttributeError, NotImplementedError):
            out["int8_gops"] = None
    return out


def _gpu() -> list[dict]:
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(
            {
                "name": p.name,
                "memory_gib": round(p.total_memory / 2**30, 1),
                "capability": f"{p.major}.{p.minor}",
            }
        )
    return gpus


def machine_report(*, measure: bool = True, seconds: float = 0.5) -> dict:
    """CPU facts, the GEMM peaks (``measure``), GPUs, and torch's version and threads.

    The header of every ``doctor --machine`` and ``bench`` output (JSON key ``machine``).
    """
    import torch  # noqa: PLC0415

    report = {
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpus": _gpu(),
    }
    if measure:
        report["gemm"] = gemm_peaks(seconds=seconds)
    return report


def header_lines(report: dict) -> list[str]:
    """:func:`machine_report` for a person: the CPU and its flags, bf16 / int8 support, GEMM peaks, GPUs."""
    cpu = report["cpu"]
    lines = [
        f"machine: {cpu['model']} ({cpu['arch']}), {cpu['logical_cores']} logical cores, "
        f"torch {report['torch']} ({report.get('torch_threads', '?')} threads)",
        f"  flags that matter: {', '.join(cpu['flags']) or 'none of them'}",
        f"  bf16: {'native' if cpu['native_bf16'] else 'emulated (no AVX512-BF16/AMX-BF16): slower than fp32'}; "
        f"int8 dot products: {'yes' if cpu['int8_dot'] else 'no VNNI/AMX-INT8/I8MM'}",
    ]
    gemm = report.get("gemm")
    if gemm:
        int8 = (
            f"{gemm['int8_gops']:.0f} GOP/s" if gemm["int8_gops"] is not None else "n/a in this torch build"
        )
        lines.append(
            f"  measured GEMM ({gemm['n']}x{gemm['n']}, {gemm['threads']} threads): fp32 "
            f"{gemm['fp32_gflops']:.0f} GFLOP/s, bf16 {gemm['bf16_gflops']:.0f} GFLOP/s "
            f"({gemm['bf16_gflops'] / gemm['fp32_gflops']:.2f}x), int8 {int8}"
        )
    gpus = report.get("gpus") or []
    lines += [
        f"  GPU: {g['name']}, {g['memory_gib']} GiB, compute capability {g['capability']}" for g in gpus
    ]
    if not gpus:
        lines.append("  GPU: none")
    return lines
