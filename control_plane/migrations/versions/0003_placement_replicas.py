"""Replicas, traffic-weighted placement and tier budgets: pack traffic and working set, server draining,
metrics endpoint and tier budgets, placement reservations and retiring replicas"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'


def upgrade() -> None:
    with op.batch_alter_table('packs') as batch:
        batch.add_column(sa.Column('request_rate', sa.Float(), server_default='0', nullable=False))
        batch.add_column(sa.Column('working_set_bytes', sa.BigInteger(), server_default='0', nullable=False))
        batch.add_column(sa.Column('pending_reason', sa.Text(), nullable=True))
    with op.batch_alter_table('servers') as batch:
        batch.add_column(sa.Column('draining', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column('metrics_url', sa.String(length=256), nullable=True))
        batch.add_column(sa.Column('instance_type', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('disk_budget_bytes', sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column('gpu_budget_bytes', sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column('neuron_cores', sa.Integer(), nullable=True))
    with op.batch_alter_table('placements') as batch:
        batch.add_column(sa.Column('reserved_bytes', sa.BigInteger(), server_default='0', nullable=False))
        batch.add_column(sa.Column('residency_bytes', sa.BigInteger(), server_default='0', nullable=False))
        batch.add_column(sa.Column('retiring', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('placements') as batch:
        batch.drop_column('retiring')
        batch.drop_column('residency_bytes')
        batch.drop_column('reserved_bytes')
    with op.batch_alter_table('servers') as batch:
        for column in ('neuron_cores', 'gpu_budget_bytes', 'disk_budget_bytes', 'instance_type', 'metrics_url',
                       'draining'):
            batch.drop_column(column)
    with op.batch_alter_table('packs') as batch:
        for column in ('pending_reason', 'working_set_bytes', 'request_rate'):
            batch.drop_column(column)
