"""Application services. Note that they commit their own transactions."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from demo.models import AuditLog, Customer, Order, OrderItem, Payment, Product, User


class OrderError(ValueError):
    pass


def _merge_items(items: Mapping[int, int] | Iterable[tuple[int, int]]) -> dict[int, int]:
    pairs = items.items() if isinstance(items, Mapping) else items
    merged: dict[int, int] = {}
    for product_id, quantity in pairs:
        if quantity <= 0:
            raise OrderError(f"quantity for product {product_id} must be positive")
        merged[product_id] = merged.get(product_id, 0) + quantity
    if not merged:
        raise OrderError("an order needs at least one item")
    return merged


def place_order(
    session: Session,
    user_id: uuid.UUID,
    items: Mapping[int, int] | Iterable[tuple[int, int]],
) -> Order:
    """Create an order for ``user_id`` with ``items`` (product_id -> quantity).

    Locks the products, checks and decrements stock, creates the customer
    record on first purchase, writes an audit entry and COMMITS.
    """
    wanted = _merge_items(items)
    if not isinstance(user_id, uuid.UUID):
        user_id = uuid.UUID(str(user_id))
    try:
        user = session.get(User, user_id)
        if user is None or not user.is_active:
            raise OrderError(f"unknown or inactive user {user_id}")

        customer = session.scalars(
            select(Customer).where(Customer.user_id == user.id)
        ).one_or_none()
        if customer is None:
            customer = Customer(user=user, full_name=user.username)
            session.add(customer)

        products = {
            p.id: p
            for p in session.scalars(
                select(Product).where(Product.id.in_(wanted)).order_by(Product.id).with_for_update()
            )
        }
        order = Order(customer=customer, status="pending", total_cents=0)
        for product_id, quantity in sorted(wanted.items()):
            product = products.get(product_id)
            if product is None or not product.is_active:
                raise OrderError(f"unknown or inactive product {product_id}")
            if product.stock < quantity:
                raise OrderError(
                    f"only {product.stock} of {product.sku} in stock, {quantity} wanted"
                )
            product.stock -= quantity
            order.items.append(
                OrderItem(product=product, quantity=quantity, unit_price_cents=product.price_cents)
            )
            order.total_cents += quantity * product.price_cents
        session.add(order)
        session.flush()
        session.add(
            AuditLog(
                actor_id=user.id,
                action="order.placed",
                entity="orders",
                entity_id=str(order.id),
                details={
                    "items": {str(k): v for k, v in wanted.items()},
                    "total_cents": order.total_cents,
                },
            )
        )
        session.commit()
    except Exception:
        session.rollback()
        raise
    return order


def record_payment(
    session: Session,
    order_id: int,
    amount_cents: int,
    provider: str = "test",
    provider_ref: str | None = None,
) -> Payment:
    """Record a successful payment; marks the order paid once fully covered. Commits."""
    try:
        order = session.get(Order, order_id, with_for_update=True)
        if order is None:
            raise OrderError(f"unknown order {order_id}")
        payment = Payment(
            order=order,
            amount_cents=amount_cents,
            provider=provider,
            provider_ref=provider_ref,
            status="succeeded",
        )
        session.add(payment)
        session.flush()
        paid = sum(p.amount_cents for p in order.payments if p.status == "succeeded")
        if paid >= order.total_cents:
            order.status = "paid"
        session.commit()
    except Exception:
        session.rollback()
        raise
    return payment
