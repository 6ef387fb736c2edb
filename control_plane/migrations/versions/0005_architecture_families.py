"""Architecture families: a table of architectures (one program each, shared by its members) and, per model
version, its architecture, its weights file and, when the artifact could not be split, why"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'


def upgrade() -> None:
    op.create_table(
        'architectures',
        sa.Column('id', sa.String(length=64), primary_key=True),
        sa.Column('format', sa.String(length=32), nullable=False),
        sa.Column('program_key', sa.String(length=512), nullable=False),
        sa.Column('program_sha256', sa.String(length=64), nullable=False),
        sa.Column('program_bytes', sa.BigInteger(), nullable=False),
        sa.Column('parameter_bytes', sa.BigInteger(), nullable=False),
        sa.Column('tensors', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table('model_versions') as batch:
        batch.add_column(sa.Column('architecture', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('weights_key', sa.String(length=512), nullable=True))
        batch.add_column(sa.Column('weights_sha256', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('weights_bytes', sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column('split_reason', sa.Text(), nullable=True))
        batch.add_column(sa.Column('whole_artifact', sa.Boolean(), server_default=sa.true(), nullable=False))
        batch.create_index('ix_model_versions_architecture', ['architecture'])
        batch.create_foreign_key('fk_model_versions_architecture', 'architectures', ['architecture'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('model_versions') as batch:
        batch.drop_constraint('fk_model_versions_architecture', type_='foreignkey')
        batch.drop_index('ix_model_versions_architecture')
        for column in ('whole_artifact', 'split_reason', 'weights_bytes', 'weights_sha256', 'weights_key',
                       'architecture'):
            batch.drop_column(column)
    op.drop_table('architectures')
