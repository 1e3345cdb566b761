"""NPS surveys in chat: the question's language and the follow-up prompt's message

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nps_survey", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lang", sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default="en")
        )
        batch_op.add_column(sa.Column("comment_ref", sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nps_survey", schema=None) as batch_op:
        batch_op.drop_column("comment_ref")
        batch_op.drop_column("lang")
