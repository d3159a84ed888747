"""users.last_login_at and an index for "orders of a customer, newest first"

Revision ID: 0004
Revises: 0003
Create Date: 2024-02-20 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_orders_customer_id_created_at", "orders", ["customer_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_orders_customer_id_created_at", table_name="orders")
    op.drop_column("users", "last_login_at")
