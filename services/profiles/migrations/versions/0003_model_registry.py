"""The model registry: model_publications (which bundle is active per model kind, with history).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "model_publications",
        sa.Column("publication_id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("model_kind", sa.String(64), nullable=False),
        sa.Column("version", sa.String(255), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("published_by", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("published_at", TIMESTAMP, nullable=False),
        sa.Column("rollback", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("publication_id", name=op.f("pk_model_publications")),
    )
    op.create_index(
        op.f("ix_model_publications_model_kind_publication_id"),
        "model_publications",
        ["model_kind", "publication_id"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_model_publications_model_kind_publication_id"), table_name="model_publications"
    )
    op.drop_table("model_publications")
