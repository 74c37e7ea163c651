"""next-pair indexes and the shown layout of an assignment

- ix_pairs_next becomes (filled, priority DESC, id): the order the next-pair query reads, so it stops after a
  few index rows instead of sorting every unfilled pair.
- ix_assignments_annotator_pair (annotator_id, pair_id) becomes (annotator_id, status, pair_id): finds an
  annotator's open assignment without reading their whole history.
- assignments.swapped: whether candidate_b was shown on the left, so a page reload keeps the layout.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 16:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_pairs_next', table_name='pairs')
    op.create_index('ix_pairs_next', 'pairs', ['filled', sa.text('priority DESC'), 'id'], unique=False)
    op.drop_index('ix_assignments_annotator_pair', table_name='assignments')
    op.create_index('ix_assignments_annotator_status_pair', 'assignments', ['annotator_id', 'status', 'pair_id'],
                    unique=False)
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('swapped', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.drop_column('swapped')
    op.drop_index('ix_assignments_annotator_status_pair', table_name='assignments')
    op.create_index('ix_assignments_annotator_pair', 'assignments', ['annotator_id', 'pair_id'], unique=False)
    op.drop_index('ix_pairs_next', table_name='pairs')
    op.create_index('ix_pairs_next', 'pairs', ['filled', 'priority', 'id'], unique=False)
