"""The one way envkit changes ``os.environ`` in its own process, and puts it back.

The pytest plugin points a test process at its database (and a clone-isolated
test at its clone); in-process migrations and seed hooks run with the
environment's variables. Each records what a name held before its first
change, so that restoring brings back exactly that, absent names included.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


class Patch:
    """Values set in ``os.environ``, each name's earlier value kept from its first change until :meth:`restore`."""

    def __init__(self) -> None:
        self._saved: dict[str, str | None] = {}

    def set(self, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            self._saved.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def restore(self) -> None:
        """Put every name back as it was before this patch first set it; the patch is empty afterwards."""
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved.clear()


@contextlib.contextmanager
def patched(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set inside the block, as it was after it."""
    patch = Patch()
    patch.set(values)
    try:
        yield
    finally:
        patch.restore()
