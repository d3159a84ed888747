"""Application code that commits, inside a per-test transaction that is rolled back."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from demo.models import AuditLog, Customer, Order, OrderItem, Product, User
from demo.services import OrderError, place_order, record_payment

# order id created by test_place_order_commits, checked by the isolation test
_placed: dict[str, int] = {}


def _user(session: Session, username: str) -> User:
    return session.scalars(select(User).where(User.username == username)).one()


def test_place_order_commits(
    session: Session, engine: Engine, products: dict[str, Product]
) -> None:
    bob = _user(session, "bob")
    order = place_order(session, bob.id, [(products["gig"].id, 2), (products["tee"].id, 1)])
    _placed["order_id"] = order.id

    session.expire_all()  # re-read everything from the database
    stored = session.get(Order, order.id)
    assert stored is not None
    assert stored.status == "pending"
    assert stored.total_cents == 2 * 4500 + 2500
    assert stored.customer.user_id == bob.id
    assert {(i.product.sku, i.quantity) for i in stored.items} == {("TCK-GIG", 2), ("MER-TEE", 1)}
    assert session.get(Product, products["gig"].id).stock == 8
    assert (
        session.scalar(
            select(func.count()).select_from(AuditLog).where(AuditLog.entity_id == str(order.id))
        )
        == 1
    )

    payment = record_payment(session, order.id, stored.total_cents, provider_ref="ch_test_1")
    assert payment.id is not None
    session.expire_all()
    assert session.get(Order, order.id).status == "paid"

    # "committed" only up to the test's outer transaction: other connections can't see it
    with engine.connect() as other:
        assert (
            other.scalar(text("SELECT count(*) FROM orders WHERE id = :id"), {"id": order.id}) == 0
        )


def test_previous_test_order_was_rolled_back(session: Session) -> None:
    if "order_id" in _placed:
        assert session.get(Order, _placed["order_id"]) is None
    for model in (Order, OrderItem, Customer, Product, AuditLog):
        assert session.scalar(select(func.count()).select_from(model)) == 0, model.__tablename__


def test_failed_order_rolls_back_and_keeps_stock(
    session: Session, products: dict[str, Product]
) -> None:
    alice = _user(session, "alice")
    with pytest.raises(OrderError, match="in stock"):
        place_order(session, alice.id, {products["gig"].id: 1, products["vip"].id: 2})

    # the application's rollback only undid its own savepoint; the fixture data survives
    assert session.get(Product, products["gig"].id).stock == 10
    assert session.get(Product, products["vip"].id).stock == 1
    assert session.scalar(select(func.count()).select_from(Order)) == 0

    carol = _user(session, "carol")  # inactive
    with pytest.raises(OrderError, match="inactive user"):
        place_order(session, carol.id, {products["gig"].id: 1})


def test_unique_constraint_raises_integrity_error(session: Session) -> None:
    session.add(
        User(username="admin", email="someone-else@example.com", password_hash="x", role="staff")
    )
    with pytest.raises(IntegrityError, match="uq_users_username"):
        session.flush()
    session.rollback()
    # the session (and the outer transaction) are still usable
    assert (
        session.scalar(select(func.count()).select_from(User).where(User.username == "admin")) == 1
    )


def test_check_and_foreign_key_constraints(session: Session, products: dict[str, Product]) -> None:
    session.add(
        User(username="mallory", email="mallory@example.com", password_hash="x", role="superuser")
    )
    with pytest.raises(IntegrityError, match="ck_users_role"):
        session.flush()
    session.rollback()

    products["tee"].stock = -1
    with pytest.raises(IntegrityError, match="ck_products_stock_non_negative"):
        session.flush()
    session.rollback()

    session.add(Order(customer_id=987654321, total_cents=0))
    with pytest.raises(IntegrityError, match="fk_orders_customer_id_customers"):
        session.flush()
    session.rollback()
