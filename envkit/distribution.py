"""What envkit is called where it is published, and the one clash its import name can meet.

The distribution is ``envkit-test`` (``pip install envkit-test``): the name
``envkit`` belongs to an unrelated environment-variable parser. The import
package and the command stay ``envkit``. That parser may also install a
top-level ``envkit`` package, and two distributions that ship the same
top-level package overwrite each other's files without a word from pip; so the
CLI and the pytest plugin look for the other one at start and say how to fix
it. The look-up is a directory listing of each ``sys.path`` entry (no
``importlib.metadata`` import, which costs more than the check).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable

NAME = "envkit-test"
REPOSITORY = "envkit-dev/envkit-test"
EMBEDDED_HINT = f"pip install '{NAME}[embedded]'"

_OTHER = re.compile(r"^envkit-\d[^/]*\.(dist|egg)-info$", re.IGNORECASE)  # "envkit-0.7.1.dist-info"; ours is "envkit_test-..."


def other_envkit(paths: Iterable[str] | None = None) -> str | None:
    """Where the unrelated ``envkit`` distribution is installed (its metadata folder), or None."""
    for entry in sys.path if paths is None else paths:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if _OTHER.match(name):
                return os.path.join(entry, name)
    return None


def _ours_before_the_rename(found: str) -> bool:
    """Whether the 'envkit' metadata is this project's own, installed before it was published as envkit-test."""
    try:  # ours registers the pytest plugin; the parser has no pytest11 entry point
        with open(os.path.join(found, "entry_points.txt"), encoding="utf-8") as fh:
            return "envkit.pytest_plugin" in fh.read()
    except OSError:
        return False


def clash_message(found: str) -> str:
    if _ours_before_the_rename(found):
        return (f"an install of envkit made before it was published as '{NAME}' is still here ({found}), beside the new "
                f"one: the two share the 'envkit' package's files. Fix: pip uninstall -y envkit {NAME} && pip install "
                f"{NAME} (in a checkout of envkit: make venv)")
    return (f"another distribution called 'envkit' is installed ({found}): an unrelated project that also installs a "
            f"top-level 'envkit' package, so the two overwrite each other's files. envkit's own distribution is "
            f"'{NAME}'. Fix: pip uninstall -y envkit {NAME} && pip install {NAME} (the two cannot share one environment; "
            f"use a separate virtualenv for the other project)")
