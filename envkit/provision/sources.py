"""The files a setting names (a folder, a module), found without importing anything from them.

What the snapshot fingerprint and the staleness check hash (:mod:`envkit.cache`), and what
``envkit doctor`` looks for.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def tree(path: Path) -> list[Path]:
    """The files under ``path`` (none when it is not a folder), bytecode caches left out."""
    if not path.is_dir():
        return []
    return [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def module_files(module: str, root: Path) -> list[Path]:
    """The source of a module (and its package), found without importing it."""
    candidate = root / Path(*module.split("."))
    for path in (candidate.with_suffix(".py"), candidate):
        if path.is_file():
            return [path]
        if path.is_dir():
            return tree(path)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return []
    if spec and spec.submodule_search_locations:
        return [p for loc in spec.submodule_search_locations for p in tree(Path(loc))]
    return [Path(spec.origin)] if spec and spec.origin else []


def module_exists(module: str, root: Path) -> bool:
    """Whether ``module``'s top-level package is in the project at ``root`` or importable."""
    if not module:
        return False
    first = module.split(".")[0]
    return (root / first).is_dir() or (root / f"{first}.py").is_file() or importlib.util.find_spec(first) is not None


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
