"""the leaderboard, computed by the worker and cached in the store

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 18:45:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'leaderboard_cache',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('version_id', sa.Integer(), nullable=True),
        sa.Column('vote_watermark', sa.Integer(), nullable=False),
        sa.Column('votes', sa.Integer(), nullable=False),
        sa.Column('selection', sa.JSON(), nullable=False),
        sa.Column('n_bootstrap', sa.Integer(), nullable=False),
        sa.Column('seconds', sa.Float(), nullable=False),
        sa.Column('rows', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['version_id'], ['model_versions.id'],
                                name=op.f('fk_leaderboard_cache_version_id_model_versions')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_leaderboard_cache')),
    )


def downgrade() -> None:
    op.drop_table('leaderboard_cache')
