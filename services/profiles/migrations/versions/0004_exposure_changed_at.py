"""item_counters.exposure_changed_at: when an item's impression or feedback counter last moved.

The exposure service mirrors every non-zero exposure counter and reads only what changed since
its last read. Rows whose counters are already non-zero get the migration's time, so that a
first read "changed since the epoch" finds every one of them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("item_counters") as batch:
        batch.add_column(sa.Column("exposure_changed_at", TIMESTAMP, nullable=True))
    op.create_index(
        op.f("ix_item_counters_exposure_changed_at"), "item_counters", ["exposure_changed_at"]
    )
    now = dt.datetime.now(dt.UTC)
    # SQLite keeps UTC datetimes naive (models.UtcDateTime).
    value = now.replace(tzinfo=None) if op.get_bind().dialect.name == "sqlite" else now
    counters = sa.table(
        "item_counters",
        sa.column("impression_count", sa.BigInteger()),
        sa.column("feedback_count", sa.BigInteger()),
        sa.column("exposure_changed_at", TIMESTAMP),
    )
    op.execute(
        counters.update()
        .where(sa.or_(counters.c.impression_count > 0, counters.c.feedback_count > 0))
        .values(exposure_changed_at=value)
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_item_counters_exposure_changed_at"), table_name="item_counters")
    with op.batch_alter_table("item_counters") as batch:
        batch.drop_column("exposure_changed_at")
