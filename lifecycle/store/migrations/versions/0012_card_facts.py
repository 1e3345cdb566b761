"""card facts: the account card's stage KPIs stored at recompute time, and status indexes for the churn figures

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_card_fact",
        sa.Column("account_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("stamp", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("kpis", sa.JSON(), nullable=False),
        sa.Column("computed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.create_index("ix_account_status_churned_on", "account", ["status", "churned_on"])
    op.create_index("ix_account_status_churn_probability", "account", ["status", "churn_probability"])


def downgrade() -> None:
    op.drop_index("ix_account_status_churn_probability", table_name="account")
    op.drop_index("ix_account_status_churned_on", table_name="account")
    op.drop_table("account_card_fact")
