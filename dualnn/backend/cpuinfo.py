"""What the CPU is, from ``/proc/cpuinfo``: its feature flags and its vendor.

The NumPy backend's library choices rest on these: a bfloat16 GEMM needs AVX-512 BF16 or
AMX-BF16 (:mod:`~dualnn.backend.bf16_gemm`), and oneMKL is used only on Intel CPUs
(:mod:`~dualnn.backend.mkl_gemm`; measured slower than OpenBLAS on an AMD EPYC).
Where ``/proc/cpuinfo`` cannot be read, both answers are empty.
"""

from __future__ import annotations


def _cpuinfo_field(name):
    """The first ``name : value`` line's value in ``/proc/cpuinfo`` (``""`` if none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def cpu_flags():
    """The CPU's feature flags, as a set; empty when unreadable."""
    return set(_cpuinfo_field("flags").split())


def cpu_vendor():
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``; ``""`` if unknown)."""
    return _cpuinfo_field("vendor_id")
