"""usage roll-ups (one packed row of recent usage per account), change marks for the incremental recompute

Revision ID: 0011
Revises: 0010

Creates `usage_rollup` and fills it from `usage_daily` (what `csbot rebuild-rollups` does), `account_change` with
the triggers that mark accounts whose tickets, notes, NPS answers or account fields change, and `recompute_state`.
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

from lifecycle.store.models import CHANGE_CHILD_TABLES, change_trigger_ddl

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_rollup",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("end_day", sa.Date(), nullable=True),
        sa.Column("first_feature_day", sa.Date(), nullable=True),
        sa.Column("days", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["account.id"]),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.create_table(
        "account_change",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.create_table(
        "recompute_state",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("digest", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    bind = op.get_bind()
    for statement in change_trigger_ddl(bind.dialect.name):
        bind.exec_driver_sql(statement)
    from lifecycle.scoring.rollups import rebuild

    rebuild(bind)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in ("account", *CHANGE_CHILD_TABLES):
            bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS trg_change_{table} ON {table}")
        bind.exec_driver_sql("DROP FUNCTION IF EXISTS csbot_mark_account()")
        bind.exec_driver_sql("DROP FUNCTION IF EXISTS csbot_mark_child()")
    else:
        for name in ("account_ins", "account_upd", *(f"{t}_{op_}" for t in CHANGE_CHILD_TABLES
                                                      for op_ in ("ins", "upd", "del"))):
            bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS trg_change_{name}")
    op.drop_table("recompute_state")
    op.drop_table("account_change")
    op.drop_table("usage_rollup")
