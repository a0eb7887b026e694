"""The JSON record of a run: machine, versions, settings, masked URLs, every cell and ratio."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import sqlite3
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks import loops
from benchmarks.backends import Backend
from benchmarks.runner import Config
from benchmarks.summary import Results, Summary

PACKAGES = (
    "asyncdal",
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "alembic",
    "uvloop",
    "rich",
    "matplotlib",
)


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU, cores, OS and load when the run ended."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "load_average": None if load is None else [round(x, 2) for x in load],
    }


def versions() -> dict[str, str]:
    """Python, SQLite library and package versions."""
    found = {"python": platform.python_version(), "sqlite_library": sqlite3.sqlite_version}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def cell_record(summary: Summary) -> dict[str, Any]:
    record = dataclasses.asdict(summary)
    record.update(record.pop("key"))
    return record


def document(
    *,
    config: Config,
    command: str,
    backends: list[Backend],
    results: Results,
    ratios: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    started: str,
    wall_seconds: float,
) -> dict[str, Any]:
    """The whole run as one JSON-ready dict; URLs appear only masked."""
    doc: dict[str, Any] = _clean(
        {
            "format": 1,
            "started_at": started,
            "wall_seconds": round(wall_seconds, 1),
            "command": command,
            "machine": machine(),
            "loop": loops.describe(config.loop),
            "versions": versions(),
            "settings": dataclasses.asdict(config)
            | {"sqlalchemy_pool": "pool_size=N, max_overflow=0"},
            "backends": [
                {"name": b.name, "url": b.masked_url, "server_version": b.server_version}
                for b in backends
            ],
            "cells": [cell_record(summary) for summary in results],
            "ratios": ratios,
            "lost_update_checks": checks,
        }
    )
    return doc


def write(
    doc: dict[str, Any], directory: Path, stamp: str, latest_name: str = "latest"
) -> tuple[Path, Path]:
    """Write ``bench-<stamp>.json`` and copy it to ``<latest_name>.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-{stamp}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    latest = directory / f"{latest_name}.json"
    shutil.copyfile(path, latest)
    return path, latest
