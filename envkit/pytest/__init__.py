"""envkit's pytest plugin, by job; ``envkit.pytest_plugin`` (the ``pytest11`` entry point) is its face.

- :mod:`.hooks`: the pytest hooks, the options, the marker;
- :mod:`.plugin`: the plugin's state, one per pytest process (finding the environment, this process's database);
- :mod:`.fixtures`: every fixture;
- :mod:`.types`: what the fixtures hand out.

Modules here import pytest itself absolutely (``import pytest``): this package is never on ``sys.path`` as ``pytest``.
"""
