"""Hardware description shared by the benchmark scripts (imported as a sibling module: run them as scripts)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
