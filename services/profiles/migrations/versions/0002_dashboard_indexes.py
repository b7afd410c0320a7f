"""Indexes of the dashboard's queries: impressions by served_at, feedback by request_id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ANSWERS_A_REQUEST = sa.text("request_id IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        op.f("ix_impressions_served_at_request_id"), "impressions", ["served_at", "request_id"]
    )
    op.create_index(
        op.f("ix_interactions_request_id_item_id_kind"),
        "interactions",
        ["request_id", "item_id", "kind"],
        sqlite_where=_ANSWERS_A_REQUEST,
        postgresql_where=_ANSWERS_A_REQUEST,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_interactions_request_id_item_id_kind"), table_name="interactions")
    op.drop_index(op.f("ix_impressions_served_at_request_id"), table_name="impressions")
