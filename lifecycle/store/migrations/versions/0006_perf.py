"""Performance: a covering index for the whole-portfolio usage window aggregates; case-insensitive external ids

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_usage_cover", "usage_daily",
        ["account_id", "feature", "day", "active_users", "logins", "events"], unique=False,
    )
    op.create_index("ix_account_external_id_lower", "account", [sa.text("lower(external_id)")], unique=False)


def downgrade() -> None:
    op.drop_index("ix_account_external_id_lower", table_name="account")
    op.drop_index("ix_usage_cover", table_name="usage_daily")
