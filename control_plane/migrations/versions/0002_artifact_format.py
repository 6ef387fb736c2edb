"""model_versions.format: the artifact's format (torchscript or torch_export), detected at registration"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'


def upgrade() -> None:
    with op.batch_alter_table('model_versions') as batch:
        batch.add_column(sa.Column('format', sa.String(length=32), server_default='torchscript', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('model_versions') as batch:
        batch.drop_column('format')
