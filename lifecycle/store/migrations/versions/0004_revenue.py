"""Revenue history: one row per ARR change of an account (new, expansion, contraction, churn, reactivation)

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "arr_change",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("arr_before", sa.Float(), nullable=False),
        sa.Column("arr_after", sa.Float(), nullable=False),
        sa.Column("seats_before", sa.Integer(), nullable=False),
        sa.Column("seats_after", sa.Integer(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["account.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "day", "kind", name="uq_arr_change_account_day_kind"),
    )
    op.create_index("ix_arr_change_day", "arr_change", ["day"], unique=False)
    op.create_index(op.f("ix_arr_change_account_id"), "arr_change", ["account_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_arr_change_account_id"), table_name="arr_change")
    op.drop_index("ix_arr_change_day", table_name="arr_change")
    op.drop_table("arr_change")
