"""Helpers for the Stan tests: Stan code written once into the build cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

from stan_bridge.builder import cache_dir


def write_code(code: str, name: str) -> Path:
    """``code`` as ``<cache>/programs/<name>-<hash>/<name>.stan`` (compiled once per machine)."""
    digest = hashlib.sha256(code.encode()).hexdigest()[:12]
    folder = cache_dir() / "programs" / f"{name}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.stan"
    if not path.exists() or path.read_text() != code:
        path.write_text(code)
    return path
