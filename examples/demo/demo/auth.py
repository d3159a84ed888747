"""Password checking against the bcrypt hashes stored in ``users.password_hash``."""

from __future__ import annotations

import bcrypt
from sqlalchemy import select
from sqlalchemy.orm import Session

from demo.models import User


def hash_password(plain: str, rounds: int = 12) -> str:
    return bcrypt.hashpw(plain.encode("utf-8"), bcrypt.gensalt(rounds)).decode("ascii")


def verify_password(user_or_hash: User | str | bytes, plain: str) -> bool:
    """True if ``plain`` matches the bcrypt hash (a ``User`` row or the hash itself)."""
    stored = user_or_hash.password_hash if isinstance(user_or_hash, User) else user_or_hash
    if isinstance(stored, str):
        stored = stored.encode("ascii", "replace")
    try:
        return bcrypt.checkpw(plain.encode("utf-8"), stored)
    except ValueError:  # malformed hash, or password longer than bcrypt allows
        return False


def authenticate(session: Session, username: str, password: str) -> User | None:
    """Return the active user with this username/password, else ``None``."""
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    if user is None or not user.is_active:
        return None
    return user if verify_password(user, password) else None
