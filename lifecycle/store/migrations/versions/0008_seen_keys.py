"""seen keys: platform deliveries already handled, shared by every replica

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "seen_key",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("seen_key", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_seen_key_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("seen_key", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_seen_key_expires_at"))
    op.drop_table("seen_key")
