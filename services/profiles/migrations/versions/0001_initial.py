"""Initial schema: users, items, interactions, impressions, item_counters.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("interests", sa.Text(), nullable=False),
        sa.Column("attributes", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_users")),
    )
    op.create_table(
        "items",
        sa.Column("item_id", sa.String(255), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("categories", JSON, nullable=False),
        sa.Column("attributes", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=True),
        sa.Column("vector_model_name", sa.String(255), nullable=True),
        sa.Column("vector_model_version", sa.String(255), nullable=True),
        sa.Column("vector_dim", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("item_id", name=op.f("pk_items")),
    )
    op.create_index(
        op.f("ix_items_vector_model_name_vector_model_version"),
        "items",
        ["vector_model_name", "vector_model_version"],
    )
    op.create_table(
        "interactions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("item_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("occurred_at", TIMESTAMP, nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.user_id"], name=op.f("fk_interactions_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.item_id"], name=op.f("fk_interactions_item_id_items")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interactions")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_interactions_idempotency_key")),
    )
    op.create_index(
        op.f("ix_interactions_user_id_occurred_at"), "interactions", ["user_id", "occurred_at"]
    )
    op.create_index(op.f("ix_interactions_item_id"), "interactions", ["item_id"])
    op.create_table(
        "impressions",
        sa.Column("request_id", sa.String(255), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("item_id", sa.String(255), nullable=False),
        sa.Column("policy_name", sa.String(255), nullable=False),
        sa.Column("policy_version", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("served_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("request_id", "position", name=op.f("pk_impressions")),
    )
    op.create_table(
        "item_counters",
        sa.Column("item_id", sa.String(255), nullable=False),
        sa.Column("interaction_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("impression_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("feedback_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.item_id"], name=op.f("fk_item_counters_item_id_items")
        ),
        sa.PrimaryKeyConstraint("item_id", name=op.f("pk_item_counters")),
    )


def downgrade() -> None:
    op.drop_table("item_counters")
    op.drop_table("impressions")
    op.drop_index(op.f("ix_interactions_item_id"), table_name="interactions")
    op.drop_index(op.f("ix_interactions_user_id_occurred_at"), table_name="interactions")
    op.drop_table("interactions")
    op.drop_index(op.f("ix_items_vector_model_name_vector_model_version"), table_name="items")
    op.drop_table("items")
    op.drop_table("users")
