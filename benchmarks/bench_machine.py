"""What every benchmark records about the machine it ran on (figures are ratios on it)."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(*, tensorflow: bool = False) -> dict:
    """Cores, CPU, Python, OS; TensorFlow's version too when asked (it imports TensorFlow)."""
    facts = {"nproc": os.cpu_count(), "cpu_model": cpu_model(),
             "python": platform.python_version(), "platform": platform.platform()}
    if tensorflow:
        import tensorflow as tf

        facts["tensorflow"] = tf.__version__
    return facts
