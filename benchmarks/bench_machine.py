"""What every benchmark records about the machine it ran on (figures are ratios on it)."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows.

    Hosts under one name differ (fastscnn trained at 8-9 images/s on one "AMD EPYC" host of
    this project and at 25 on another, family 26), so the family and model numbers follow it,
    and the bfloat16 instructions it has: mixed bfloat16 halved pspnet's training step on a
    host with AMX and made it ten times slower on one without (`train_step.py`).
    """
    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        if fields.get("model name"):
            numbers = [f"{key} {fields[key]}" for key in ("cpu family", "model") if key in fields]
            numbers += [flag for flag in ("avx512_bf16", "amx_bf16")
                        if flag in fields.get("flags", "").split()]
            return fields["model name"] + (f" ({', '.join(numbers)})" if numbers else "")
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
