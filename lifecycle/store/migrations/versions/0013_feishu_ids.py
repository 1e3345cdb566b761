"""feishu ids: users' and contacts' Feishu/Lark open_id and union_id, and the contact's group chat for surveys

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_USER = ("feishu_open_id", "feishu_union_id")
_CONTACT = ("feishu_open_id", "feishu_union_id", "feishu_chat_id")


def upgrade() -> None:
    for table, names in (("user", _USER), ("contact", _CONTACT)):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name in names:
                batch_op.add_column(sa.Column(name, sqlmodel.sql.sqltypes.AutoString(), nullable=True))
                batch_op.create_index(batch_op.f(f"ix_{table}_{name}"), [name], unique=False)


def downgrade() -> None:
    for table, names in (("contact", _CONTACT), ("user", _USER)):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name in reversed(names):
                batch_op.drop_index(batch_op.f(f"ix_{table}_{name}"))
                batch_op.drop_column(name)
