"""usage ingest API: seen message ids, per-day user sets, user→account map, per-source status, last usage time

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_usage_at", sa.DateTime(), nullable=True))

    op.create_table(
        "usage_user_day",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("feature", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_key", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["account.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "feature", "day", "user_key", name="uq_usage_user_day"),
    )
    with op.batch_alter_table("usage_user_day", schema=None) as batch_op:
        batch_op.create_index("ix_usage_user_day_day", ["day"], unique=False)

    op.create_table(
        "ingest_message",
        sa.Column("message_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
    )
    with op.batch_alter_table("ingest_message", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ingest_message_received_at"), ["received_at"], unique=False)

    op.create_table(
        "ingest_user",
        sa.Column("user_key", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("account_external_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_key"),
    )

    op.create_table(
        "ingest_source",
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_received_at", sa.DateTime(), nullable=False),
        sa.Column("last_event_at", sa.DateTime(), nullable=True),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("unknown", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("source"),
    )


def downgrade() -> None:
    op.drop_table("ingest_source")
    op.drop_table("ingest_user")
    with op.batch_alter_table("ingest_message", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ingest_message_received_at"))
    op.drop_table("ingest_message")
    with op.batch_alter_table("usage_user_day", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_user_day_day")
    op.drop_table("usage_user_day")
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.drop_column("last_usage_at")
