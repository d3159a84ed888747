"""The docker backend: services as containers of one compose project per run.

    backend.py     ComposeBackend: plan, render, compose up, wait, teardown, prune
    render.py      docker-compose.test.yml from the Jinja2 templates
    engine.py      which engine (DOCKER_HOST, contexts, TLS) and the Compose CLI
    containers.py  container state, health, ports and logs while waiting
    snapshots.py   the migrated and seeded data directory kept in the cache
    reaper.py      labels, and the environments of envkit processes that were killed

Nothing is imported here (the Docker SDK is slow to import): ``envkit.backends.BACKENDS``
names ``backend:ComposeBackend``.
"""
