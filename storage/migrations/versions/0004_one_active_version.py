"""at most one active model version, enforced by a partial unique index

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 18:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('uq_model_versions_one_active', 'model_versions', ['status'], unique=True,
                    sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))


def downgrade() -> None:
    op.drop_index('uq_model_versions_one_active', table_name='model_versions')
