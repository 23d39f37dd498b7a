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


def result_header(script: str, argv: list[str]) -> dict:
    """The facts every result file starts with: when, the exact command, the machine."""
    import shlex
    from datetime import datetime, timezone

    return {"generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["python", f"benchmarks/{script}", *argv]),
            "machine": machine_facts(tensorflow=True)}


def reproduce(command: str) -> list[str]:
    """The Markdown lines that close every result table: how to get it again."""
    return ["", "Reproduce with:", "", "```", command, "```", ""]


def write_result(output: Path, result: dict, markdown: str) -> None:
    """Writes OUTPUT.json (everything) and OUTPUT.md (the tables)."""
    import json

    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown)
