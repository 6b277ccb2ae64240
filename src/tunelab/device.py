"""What this machine can do: bf16 support and a measured matmul peak (cached)."""

from __future__ import annotations

import json
import time
from functools import cache
from pathlib import Path

from .atomic import write_json
from .home import home


@cache
def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


BF16_MIN_GAIN = 1.25  # bf16 matmuls must beat fp32 by this much before auto picks bf16 on a CPU


def use_bf16(precision: str) -> bool:
    """precision: auto|bf16|fp32 -> whether to autocast to bf16 here.

    auto: bf16 on GPUs that support it. On CPUs it depends on the machine, not only its flags: two AVX-512-bf16
    CPUs of the same family measured bf16 matmuls at 2.2x and at 0.5x the fp32 rate (bench/precision_cpu.py),
    so auto measures both (cached) and picks bf16 only where it is clearly faster.
    """
    import torch

    if precision == "fp32":
        return False
    supported = torch.cuda.is_bf16_supported() if device() == "cuda" else cpu_has_bf16()
    if precision == "bf16":
        if not supported:
            from .config import ConfigError

            raise ConfigError("model.precision=bf16, but this machine has no bf16 support; use auto or fp32")
        return True
    if not supported:
        return False
    return device() == "cuda" or matmul_peak_gflops(True) >= BF16_MIN_GAIN * matmul_peak_gflops(False)


def boot_id() -> str:
    """This boot of the machine: figures measured now (matmul peak, probe time) hold until the next boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "unknown"


def measure_matmul_gflops(bf16: bool, n: int = 1024) -> float:
    """Dense n x n matmul throughput through torch now: the best of five 0.2 s windows (the peak, not whatever
    else the machine was doing)."""
    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(5):
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.2:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def matmul_peak_gflops(bf16: bool) -> float:
    """Dense matmul throughput through torch on this machine, measured once and cached."""
    import torch

    # Per boot: the same cache directory can move to another host (containers, shared home directories).
    key = f"{boot_id()}-{device()}-{'bf16' if bf16 else 'fp32'}-{torch.get_num_threads()}t"
    cache_file = home() / "hardware.json"
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return float(known[key])
    gflops = measure_matmul_gflops(bf16)
    known = {k: v for k, v in known.items() if k.startswith(boot_id())}  # drop other boots' figures
    known[key] = round(gflops, 1)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    write_json(cache_file, known)
    return gflops


def estimate_tokens_per_second(n_params: int, lora: bool = True, bf16: bool | None = None) -> float:
    """Rough training throughput from the measured matmul peak: ~6N FLOPs per token for full
    fine-tuning, 4N with frozen weights (N = non-embedding parameters), at ~40% of the peak
    (what LoRA training of the default model measured on a 2-core AVX-512 CPU)."""
    bf16 = use_bf16("auto") if bf16 is None else bf16
    flops_per_token = (4 if lora else 6) * n_params
    return matmul_peak_gflops(bf16) * 1e9 * 0.4 / flops_per_token


def cpu_name() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cgroup_limit() -> int | None:
    """A container's memory limit (cgroup v2 or v1), in bytes; None where there is none."""
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(f).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:
            return int(raw)
    return None


def memory_mib() -> dict[str, int]:
    """The memory a run can have, in MiB: total and available now (RAM, within a container's limit), and the
    GPU's total where there is one."""
    import psutil

    vm = psutil.virtual_memory()
    total, available = vm.total, vm.available
    limit = _cgroup_limit()
    if limit is not None:
        total, available = min(total, limit), min(available, limit)
    out = {"total": total >> 20, "available": available >> 20}
    if device() == "cuda":
        import torch

        free, gpu_total = torch.cuda.mem_get_info()
        out |= {"gpu_total": gpu_total >> 20, "gpu_available": free >> 20}
    return out


def peak_rss_mib() -> float:
    """This process's own peak resident memory (VmHWM). Not ru_maxrss: on Linux a child's ru_maxrss starts at
    its parent's high-water mark when it was spawned (exec keeps the old one), so the child of a large process
    (a test runner, a server with a model loaded) would report its parent's memory as its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
