"""users.profile_version: moves with every write a user's profile depends on.

GetUserProfile returns it as profile_version, and a caller holding a profile passes it back
(if_profile_version_differs) to skip re-reading one that did not change. Existing users start at 0:
no caller holds a version from before this migration.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("profile_version", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("profile_version")
