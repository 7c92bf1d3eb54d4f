"""runs.source_position_json: the source's byte position after the ingested rows.

A resume of a seekable source (CSV) checks one SHA-256 over the bytes already ingested and seeks
there, instead of re-reading and re-hashing every recorded row. Older runs keep NULL and are
verified row by row, as before.

Revision ID: 0002_source_position
Revises: 0001_baseline
Create Date: 2026-12-04 03:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = "0002_source_position"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("source_position_json", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("source_position_json")
