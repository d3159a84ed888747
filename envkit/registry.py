"""The names envkit's registries are keyed by, where the layers below the registries can read them.

``config`` validates against these and the CLI and the pytest plugin offer them as choices; what each
name stands for lives with what it describes:

    BACKENDS          name -> "module:class", imported only when chosen (:func:`envkit.backends.by_name`)
    MIGRATION_KINDS   the kinds :data:`envkit.provision.migrate.KINDS` describes, one record each
                      (how it applies, which files decide its result, what ``envkit doctor`` checks);
                      tests/test_registry.py holds the names and the records together

``auto`` is a choice for each, never a registered name: it is resolved to one before use.
"""

from __future__ import annotations

AUTO = "auto"

#: name -> "module:class": the docker SDK is slow to import, so a backend is imported only when chosen.
BACKENDS: dict[str, str] = {
    "native": "envkit.backends.native.backend:NativeBackend",
    "docker": "envkit.backends.docker.backend:ComposeBackend",
    "external": "envkit.backends.external:ExternalBackend",
}

MIGRATION_KINDS: tuple[str, ...] = ("none", "alembic", "sql", "metadata", "command")
