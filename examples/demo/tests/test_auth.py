"""Seeded users (see seed.toml) and password authentication."""

from __future__ import annotations

from typing import Any

import bcrypt
from sqlalchemy import select
from sqlalchemy.orm import Session

from demo.auth import authenticate, verify_password
from demo.models import User


def test_seeded_users_have_bcrypt_hashes(
    session: Session, seed_users: list[dict[str, Any]]
) -> None:
    rows = {u.username: u for u in session.scalars(select(User))}
    assert set(rows) >= {u["username"] for u in seed_users}
    for seed in seed_users:
        user = rows[seed["username"]]
        assert user.email == seed["email"]
        assert user.role == seed["role"]
        assert user.is_active is seed.get("is_active", True)
        assert user.id is not None and user.id.version == 4
        assert user.created_at is not None
        assert user.password_hash.startswith("$2b$")
        assert user.password_hash != seed["password"]
        assert bcrypt.checkpw(seed["password"].encode(), user.password_hash.encode())


def test_authenticate_with_correct_password(
    session: Session, seed_users: list[dict[str, Any]]
) -> None:
    bob = next(u for u in seed_users if u["username"] == "bob")
    user = authenticate(session, "bob", bob["password"])
    assert user is not None
    assert (user.username, user.role) == ("bob", "customer")


def test_authenticate_rejects_bad_credentials(
    session: Session, seed_users: list[dict[str, Any]]
) -> None:
    assert authenticate(session, "admin", "not-the-password") is None
    assert authenticate(session, "nobody", "whatever") is None
    assert verify_password("not-a-bcrypt-hash", "whatever") is False

    inactive = [u for u in seed_users if not u.get("is_active", True)]
    for seed in inactive:
        # the password is right, but the account is disabled
        assert authenticate(session, seed["username"], seed["password"]) is None
