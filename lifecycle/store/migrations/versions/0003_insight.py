"""Insight: churn probability, reasons and cohort on accounts; stored churn models; behaviour cohorts

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.add_column(sa.Column("churn_probability", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("churn_reasons", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("churn_scored_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("cohort", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_account_cohort"), ["cohort"], unique=False)

    op.create_table(
        "churn_model",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("horizon_days", sa.Integer(), nullable=False),
        sa.Column("trained_at", sa.DateTime(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version"),
    )
    with op.batch_alter_table("churn_model", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_churn_model_trained_at"), ["trained_at"], unique=False)

    op.create_table(
        "cohort",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("traits", sa.JSON(), nullable=False),
        sa.Column("computed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("cohort")
    with op.batch_alter_table("churn_model", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_churn_model_trained_at"))
    op.drop_table("churn_model")
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_account_cohort"))
        batch_op.drop_column("cohort")
        batch_op.drop_column("churn_scored_at")
        batch_op.drop_column("churn_reasons")
        batch_op.drop_column("churn_probability")
