"""Data layer of a small shop / ticketing backend used as the envkit example."""

__all__ = ["auth", "cache", "db", "models", "services"]
