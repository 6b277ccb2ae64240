"""files, jobs, events and checkpoints

Revision ID: 0001
Revises: -
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ft_files',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('project', sa.String(length=128), nullable=False),
    sa.Column('filename', sa.Text(), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('bytes', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('ft_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ft_files_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_ft_files_project'), ['project'], unique=False)

    op.create_table('ft_jobs',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('project', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('model', sa.Text(), nullable=False),
    sa.Column('training_file', sa.String(length=64), nullable=False),
    sa.Column('validation_file', sa.String(length=64), nullable=True),
    sa.Column('suffix', sa.String(length=64), nullable=True),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=True),
    sa.Column('method', sa.JSON(), nullable=False),
    sa.Column('extension', sa.JSON(), nullable=True),
    sa.Column('config', sa.Text(), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('fine_tuned_model', sa.Text(), nullable=True),
    sa.Column('model_deleted', sa.Integer(), nullable=False),
    sa.Column('run_dir', sa.Text(), nullable=True),
    sa.Column('trained_tokens', sa.Integer(), nullable=True),
    sa.Column('result_files', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('finished_at', sa.Integer(), nullable=True),
    sa.Column('estimated_finish', sa.Integer(), nullable=True),
    sa.Column('worker', sa.String(length=256), nullable=True),
    sa.Column('heartbeat', sa.Float(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('resume', sa.Integer(), nullable=False),
    sa.Column('requested', sa.String(length=16), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('ft_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ft_jobs_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_ft_jobs_project'), ['project'], unique=False)
        batch_op.create_index(batch_op.f('ix_ft_jobs_status'), ['status'], unique=False)

    op.create_table('ft_checkpoints',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['ft_jobs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('ft_checkpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ft_checkpoints_job_id'), ['job_id'], unique=False)

    op.create_table('ft_events',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('level', sa.String(length=8), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['ft_jobs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('ft_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ft_events_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ft_events_seq'), ['seq'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('ft_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ft_events_seq'))
        batch_op.drop_index(batch_op.f('ix_ft_events_job_id'))

    op.drop_table('ft_events')
    with op.batch_alter_table('ft_checkpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ft_checkpoints_job_id'))

    op.drop_table('ft_checkpoints')
    with op.batch_alter_table('ft_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ft_jobs_status'))
        batch_op.drop_index(batch_op.f('ix_ft_jobs_project'))
        batch_op.drop_index(batch_op.f('ix_ft_jobs_created_at'))

    op.drop_table('ft_jobs')
    with op.batch_alter_table('ft_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ft_files_project'))
        batch_op.drop_index(batch_op.f('ix_ft_files_created_at'))

    op.drop_table('ft_files')
