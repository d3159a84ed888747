"""Making a started server usable: create the database, migrate, seed, drop.

Everything here needs only a :class:`~envkit.backends.base.PostgresEndpoint`
(a DSN), so it behaves the same on every backend.
"""
