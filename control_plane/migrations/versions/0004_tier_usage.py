"""Tiers: each server's tier usage as last scraped, and each placement's device-tier budget"""
from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'


def upgrade() -> None:
    with op.batch_alter_table('servers') as batch:
        batch.add_column(sa.Column('tier_usage', sa.JSON(), nullable=True))
    with op.batch_alter_table('placements') as batch:
        batch.add_column(sa.Column('device_bytes', sa.BigInteger(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('placements') as batch:
        batch.drop_column('device_bytes')
    with op.batch_alter_table('servers') as batch:
        batch.drop_column('tier_usage')
