"""Baseline landscape schema: every table of SPEC §3 (runs, rows, tokens, outcomes, batches, ...).

Revision ID: 0001_baseline
Revises: 
Create Date: 2026-11-25 02:49:50.965702
"""

from alembic import op
import sqlalchemy as sa

import elspeth_core.landscape.schema


revision = '0001_baseline'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('artifacts',
    sa.Column('artifact_id', sa.String(length=40), nullable=False),
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('sink_node_id', sa.String(length=80), nullable=False),
    sa.Column('sink_name', sa.String(length=200), nullable=False),
    sa.Column('path_or_uri', sa.Text(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('rows_written', sa.BigInteger(), nullable=False),
    sa.Column('publication_json', sa.Text(), nullable=False),
    sa.Column('updated_at', elspeth_core.landscape.schema.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('artifact_id', name=op.f('pk_artifacts')),
    sa.UniqueConstraint('run_id', 'sink_name', name='uq_artifacts_run_id_sink_name')
    )
    op.create_table('batches',
    sa.Column('batch_id', sa.String(length=40), nullable=False),
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('aggregation_node_id', sa.String(length=80), nullable=False),
    sa.Column('aggregation_name', sa.String(length=200), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('trigger_type', sa.String(length=24), nullable=True),
    sa.Column('trigger_reason', sa.Text(), nullable=True),
    sa.Column('retry_of_batch_id', sa.String(length=40), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', elspeth_core.landscape.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('completed_at', elspeth_core.landscape.schema.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('batch_id', name=op.f('pk_batches'))
    )
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.create_index('ix_batches_retry_of', ['retry_of_batch_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_batches_run_id'), ['run_id'], unique=False)

    op.create_table('checkpoints',
    sa.Column('checkpoint_id', sa.String(length=40), nullable=False),
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('row_id', sa.String(length=40), nullable=True),
    sa.Column('token_id', sa.String(length=40), nullable=True),
    sa.Column('node_id', sa.String(length=80), nullable=True),
    sa.Column('sequence_number', sa.BigInteger(), nullable=False),
    sa.Column('rows_ingested', sa.BigInteger(), nullable=False),
    sa.Column('aggregation_state_json', sa.Text(), nullable=True),
    sa.Column('topology_hash', sa.String(length=64), nullable=False),
    sa.Column('config_hash', sa.String(length=64), nullable=False),
    sa.Column('format_version', sa.Integer(), nullable=False),
    sa.Column('created_at', elspeth_core.landscape.schema.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('checkpoint_id', name=op.f('pk_checkpoints'))
    )
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpoints_run_id'), ['run_id'], unique=False)

    op.create_table('node_states',
    sa.Column('state_id', sa.String(length=48), nullable=False),
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('token_id', sa.String(length=40), nullable=False),
    sa.Column('node_id', sa.String(length=80), nullable=False),
    sa.Column('step_index', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('input_hash', sa.String(length=64), nullable=False),
    sa.Column('output_hash', sa.String(length=64), nullable=True),
    sa.Column('duration_ms', sa.Float(), nullable=False),
    sa.Column('error_json', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('state_id', name=op.f('pk_node_states'))
    )
    with op.batch_alter_table('node_states', schema=None) as batch_op:
        batch_op.create_index('ix_node_states_token', ['token_id'], unique=False)

    op.create_table('routing_events',
    sa.Column('event_id', sa.String(length=48), nullable=False),
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('state_id', sa.String(length=48), nullable=False),
    sa.Column('token_id', sa.String(length=40), nullable=False),
    sa.Column('node_id', sa.String(length=80), nullable=False),
    sa.Column('edge_label', sa.String(length=100), nullable=False),
    sa.Column('destination', sa.String(length=200), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('reason_json', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('event_id', name=op.f('pk_routing_events'))
    )
    with op.batch_alter_table('routing_events', schema=None) as batch_op:
        batch_op.create_index('ix_routing_events_token', ['token_id'], unique=False)

    op.create_table('runs',
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', elspeth_core.landscape.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('completed_at', elspeth_core.landscape.schema.UTCDateTime(timezone=True), nullable=True),
    sa.Column('config_hash', sa.String(length=64), nullable=False),
    sa.Column('topology_hash', sa.String(length=64), nullable=False),
    sa.Column('settings_json', sa.Text(), nullable=False),
    sa.Column('settings_path', sa.Text(), nullable=True),
    sa.Column('canonical_version', sa.String(length=32), nullable=False),
    sa.Column('source_rows_ingested', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('source_exhausted', sa.Boolean(), server_default=sa.text('(false)'), nullable=False),
    sa.Column('lease_owner', sa.String(length=200), nullable=True),
    sa.Column('lease_expires_at', elspeth_core.landscape.schema.UTCDateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', elspeth_core.landscape.schema.UTCDateTime(timezone=True), nullable=True),
    sa.Column('prefect_flow_run_id', sa.String(length=64), nullable=True),
    sa.Column('superseded_by', sa.String(length=40), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('run_id', name=op.f('pk_runs'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_prefect_flow_run_id'), ['prefect_flow_run_id'], unique=False)

    op.create_table('token_outcomes',
    sa.Column('outcome_id', sa.String(length=48), nullable=False),
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('token_id', sa.String(length=40), nullable=False),
    sa.Column('outcome', sa.String(length=24), nullable=False),
    sa.Column('is_terminal', sa.Boolean(), nullable=False),
    sa.Column('sink_name', sa.String(length=200), nullable=True),
    sa.Column('sink_line', sa.BigInteger(), nullable=True),
    sa.Column('batch_id', sa.String(length=40), nullable=True),
    sa.Column('fork_group_id', sa.String(length=40), nullable=True),
    sa.Column('join_group_id', sa.String(length=40), nullable=True),
    sa.Column('expand_group_id', sa.String(length=40), nullable=True),
    sa.Column('error_hash', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('recorded_at', elspeth_core.landscape.schema.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('outcome_id', name=op.f('pk_token_outcomes'))
    )
    with op.batch_alter_table('token_outcomes', schema=None) as batch_op:
        batch_op.create_index('ix_token_outcomes_sink_line', ['run_id', 'sink_name', 'sink_line'], unique=False)
        batch_op.create_index('ix_token_outcomes_token', ['token_id'], unique=False)
        batch_op.create_index('uq_token_outcomes_terminal', ['token_id'], unique=True, sqlite_where=sa.text('is_terminal = 1'), postgresql_where=sa.text('is_terminal'))

    op.create_table('transform_errors',
    sa.Column('error_id', sa.String(length=40), nullable=False),
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('token_id', sa.String(length=40), nullable=False),
    sa.Column('node_id', sa.String(length=80), nullable=False),
    sa.Column('row_hash', sa.String(length=64), nullable=True),
    sa.Column('error_json', sa.Text(), nullable=False),
    sa.Column('destination', sa.String(length=200), nullable=False),
    sa.Column('created_at', elspeth_core.landscape.schema.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('error_id', name=op.f('pk_transform_errors'))
    )
    with op.batch_alter_table('transform_errors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_transform_errors_run_id'), ['run_id'], unique=False)
        batch_op.create_index('ix_transform_errors_token', ['token_id'], unique=False)

    op.create_table('validation_errors',
    sa.Column('error_id', sa.String(length=40), nullable=False),
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('node_id', sa.String(length=80), nullable=False),
    sa.Column('row_id', sa.String(length=40), nullable=True),
    sa.Column('row_index', sa.BigInteger(), nullable=False),
    sa.Column('row_hash', sa.String(length=64), nullable=True),
    sa.Column('row_data_json', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('destination', sa.String(length=200), nullable=False),
    sa.Column('created_at', elspeth_core.landscape.schema.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('error_id', name=op.f('pk_validation_errors'))
    )
    with op.batch_alter_table('validation_errors', schema=None) as batch_op:
        batch_op.create_index('ix_validation_errors_row', ['row_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_validation_errors_run_id'), ['run_id'], unique=False)

    op.create_table('batch_members',
    sa.Column('batch_id', sa.String(length=40), nullable=False),
    sa.Column('token_id', sa.String(length=40), nullable=False),
    sa.Column('ordinal', sa.Integer(), nullable=False),
    sa.Column('data_ref', sa.Text(), nullable=True),
    sa.Column('data_hash', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.batch_id'], name=op.f('fk_batch_members_batch_id_batches')),
    sa.PrimaryKeyConstraint('batch_id', 'token_id', name=op.f('pk_batch_members'))
    )
    with op.batch_alter_table('batch_members', schema=None) as batch_op:
        batch_op.create_index('ix_batch_members_token', ['token_id'], unique=False)

    op.create_table('batch_outputs',
    sa.Column('batch_id', sa.String(length=40), nullable=False),
    sa.Column('token_id', sa.String(length=40), nullable=False),
    sa.Column('ordinal', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.batch_id'], name=op.f('fk_batch_outputs_batch_id_batches')),
    sa.PrimaryKeyConstraint('batch_id', 'token_id', name=op.f('pk_batch_outputs'))
    )
    with op.batch_alter_table('batch_outputs', schema=None) as batch_op:
        batch_op.create_index('ix_batch_outputs_token', ['token_id'], unique=False)

    op.create_table('edges',
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('edge_id', sa.String(length=200), nullable=False),
    sa.Column('from_node_id', sa.String(length=80), nullable=False),
    sa.Column('to_node_id', sa.String(length=80), nullable=False),
    sa.Column('label', sa.String(length=100), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_edges_run_id_runs')),
    sa.PrimaryKeyConstraint('run_id', 'edge_id', name=op.f('pk_edges'))
    )
    op.create_table('nodes',
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('node_id', sa.String(length=80), nullable=False),
    sa.Column('node_type', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('plugin_name', sa.String(length=100), nullable=False),
    sa.Column('plugin_version', sa.String(length=32), nullable=False),
    sa.Column('config_hash', sa.String(length=64), nullable=False),
    sa.Column('config_json', sa.Text(), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_nodes_run_id_runs')),
    sa.PrimaryKeyConstraint('run_id', 'node_id', name=op.f('pk_nodes'))
    )
    op.create_table('rows',
    sa.Column('row_id', sa.String(length=40), nullable=False),
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('source_node_id', sa.String(length=80), nullable=False),
    sa.Column('row_index', sa.BigInteger(), nullable=False),
    sa.Column('source_data_hash', sa.String(length=64), nullable=False),
    sa.Column('source_data_ref', sa.Text(), nullable=True),
    sa.Column('created_at', elspeth_core.landscape.schema.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_rows_run_id_runs')),
    sa.PrimaryKeyConstraint('row_id', name=op.f('pk_rows')),
    sa.UniqueConstraint('run_id', 'row_index', name='uq_rows_run_id_row_index')
    )
    op.create_table('run_attempts',
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('lease_owner', sa.String(length=200), nullable=False),
    sa.Column('prefect_flow_run_id', sa.String(length=64), nullable=True),
    sa.Column('rows_before', sa.BigInteger(), nullable=False),
    sa.Column('started_at', elspeth_core.landscape.schema.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', elspeth_core.landscape.schema.UTCDateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_run_attempts_run_id_runs')),
    sa.PrimaryKeyConstraint('run_id', 'attempt', name=op.f('pk_run_attempts'))
    )
    op.create_table('tokens',
    sa.Column('token_id', sa.String(length=40), nullable=False),
    sa.Column('row_id', sa.String(length=40), nullable=False),
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('branch_name', sa.String(length=100), nullable=True),
    sa.Column('fork_group_id', sa.String(length=40), nullable=True),
    sa.Column('join_group_id', sa.String(length=40), nullable=True),
    sa.Column('expand_group_id', sa.String(length=40), nullable=True),
    sa.Column('step_index', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.ForeignKeyConstraint(['row_id'], ['rows.row_id'], name=op.f('fk_tokens_row_id_rows')),
    sa.PrimaryKeyConstraint('token_id', name=op.f('pk_tokens'))
    )
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tokens_row_id'), ['row_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_tokens_run_id'), ['run_id'], unique=False)

    op.create_table('token_parents',
    sa.Column('token_id', sa.String(length=40), nullable=False),
    sa.Column('parent_token_id', sa.String(length=40), nullable=False),
    sa.Column('ordinal', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['parent_token_id'], ['tokens.token_id'], name=op.f('fk_token_parents_parent_token_id_tokens')),
    sa.ForeignKeyConstraint(['token_id'], ['tokens.token_id'], name=op.f('fk_token_parents_token_id_tokens')),
    sa.PrimaryKeyConstraint('token_id', 'parent_token_id', name=op.f('pk_token_parents'))
    )
    with op.batch_alter_table('token_parents', schema=None) as batch_op:
        batch_op.create_index('ix_token_parents_parent', ['parent_token_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('token_parents', schema=None) as batch_op:
        batch_op.drop_index('ix_token_parents_parent')

    op.drop_table('token_parents')
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tokens_run_id'))
        batch_op.drop_index(batch_op.f('ix_tokens_row_id'))

    op.drop_table('tokens')
    op.drop_table('run_attempts')
    op.drop_table('rows')
    op.drop_table('nodes')
    op.drop_table('edges')
    with op.batch_alter_table('batch_outputs', schema=None) as batch_op:
        batch_op.drop_index('ix_batch_outputs_token')

    op.drop_table('batch_outputs')
    with op.batch_alter_table('batch_members', schema=None) as batch_op:
        batch_op.drop_index('ix_batch_members_token')

    op.drop_table('batch_members')
    with op.batch_alter_table('validation_errors', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_validation_errors_run_id'))
        batch_op.drop_index('ix_validation_errors_row')

    op.drop_table('validation_errors')
    with op.batch_alter_table('transform_errors', schema=None) as batch_op:
        batch_op.drop_index('ix_transform_errors_token')
        batch_op.drop_index(batch_op.f('ix_transform_errors_run_id'))

    op.drop_table('transform_errors')
    with op.batch_alter_table('token_outcomes', schema=None) as batch_op:
        batch_op.drop_index('uq_token_outcomes_terminal', sqlite_where=sa.text('is_terminal = 1'), postgresql_where=sa.text('is_terminal'))
        batch_op.drop_index('ix_token_outcomes_token')
        batch_op.drop_index('ix_token_outcomes_sink_line')

    op.drop_table('token_outcomes')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_prefect_flow_run_id'))

    op.drop_table('runs')
    with op.batch_alter_table('routing_events', schema=None) as batch_op:
        batch_op.drop_index('ix_routing_events_token')

    op.drop_table('routing_events')
    with op.batch_alter_table('node_states', schema=None) as batch_op:
        batch_op.drop_index('ix_node_states_token')

    op.drop_table('node_states')
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_checkpoints_run_id'))

    op.drop_table('checkpoints')
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_batches_run_id'))
        batch_op.drop_index('ix_batches_retry_of')

    op.drop_table('batches')
    op.drop_table('artifacts')
