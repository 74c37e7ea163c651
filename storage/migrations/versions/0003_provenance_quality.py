"""provenance of tasks and votes, annotator quality control, gold pairs, uncertainty scores

- tasks/votes.provenance (human | demo | import) and .source (the imported file or folder); existing rows are
  classified from their `origin`: "demo" is demo, the app's own origins (annotate, upload, manual) are human,
  every other origin came from an import.
- users.daily_vote_cap: a per-annotator cap on votes per UTC day (NULL: the store's setting).
- pairs.gold: the known answer of a gold pair; ix_pairs_priority for the active sampling order.
- scores.log_sigma / scores.dimensions: the uncertainty and per-dimension heads' outputs.
- training_runs.vote_selection: the provenances and excluded annotators a run's snapshot read.
- annotator_flags: the latest quality-control verdict per annotator and its clearance.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 18:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

HUMAN_ORIGINS = ('annotate', 'upload', 'manual')


def _provenance_column() -> sa.Column:
    return sa.Column('provenance', sa.String(length=16), server_default='human', nullable=False)


def _backfill(table: str) -> None:
    human = ', '.join(f"'{origin}'" for origin in HUMAN_ORIGINS)
    op.execute(
        f"UPDATE {table} SET provenance = CASE WHEN origin = 'demo' THEN 'demo' "
        f"WHEN origin IN ({human}) THEN 'human' ELSE 'import' END"
    )


def upgrade() -> None:
    for table in ('tasks', 'votes'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(_provenance_column())
            batch_op.add_column(sa.Column('source', sa.String(length=1024), nullable=True))
        _backfill(table)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_check_constraint('provenance', "provenance IN ('human', 'demo', 'import')")
            batch_op.create_index(f'ix_{table}_provenance', ['provenance'], unique=False)
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('daily_vote_cap', sa.Integer(), nullable=True))
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gold', sa.String(length=16), nullable=True))
        batch_op.create_check_constraint('gold', "gold IN ('a', 'b', 'tie', 'both_bad')")
    op.create_index('ix_pairs_priority', 'pairs', [sa.text('priority DESC'), 'id'], unique=False)
    with op.batch_alter_table('scores', schema=None) as batch_op:
        batch_op.add_column(sa.Column('log_sigma', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('dimensions', sa.JSON(), nullable=True))
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('vote_selection', sa.JSON(), nullable=True))
    op.create_table(
        'annotator_flags',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('annotator_id', sa.Integer(), nullable=False),
        sa.Column('flagged', sa.Boolean(), nullable=False),
        sa.Column('reasons', sa.JSON(), nullable=False),
        sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('cleared_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('cleared_by_id', sa.Integer(), nullable=True),
        sa.Column('cleared_reason', sa.Text(), nullable=True),
        sa.Column('cleared_codes', sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(['annotator_id'], ['users.id'], name=op.f('fk_annotator_flags_annotator_id_users')),
        sa.ForeignKeyConstraint(['cleared_by_id'], ['users.id'], name=op.f('fk_annotator_flags_cleared_by_id_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_annotator_flags')),
        sa.UniqueConstraint('annotator_id', name=op.f('uq_annotator_flags_annotator_id')),
    )


def downgrade() -> None:
    op.drop_table('annotator_flags')
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_column('vote_selection')
    with op.batch_alter_table('scores', schema=None) as batch_op:
        batch_op.drop_column('dimensions')
        batch_op.drop_column('log_sigma')
    op.drop_index('ix_pairs_priority', table_name='pairs')
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_pairs_gold'), type_='check')
        batch_op.drop_column('gold')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('daily_vote_cap')
    for table in ('votes', 'tasks'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f'ix_{table}_provenance')
            batch_op.drop_constraint(op.f(f'ck_{table}_provenance'), type_='check')
            batch_op.drop_column('source')
            batch_op.drop_column('provenance')
