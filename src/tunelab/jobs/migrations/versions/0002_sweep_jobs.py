"""a job can be a sweep: its settings

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ft_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sweep', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('ft_jobs', schema=None) as batch_op:
        batch_op.drop_column('sweep')
