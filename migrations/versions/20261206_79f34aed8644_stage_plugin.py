"""Stage plugins: a nullable JSON column ``plugin`` on embedding sets, vector indexes and
neighbour sets.

Revision ID: 79f34aed8644
Revises: bf9c653d4d9a
Create Date: 2026-12-06 05:10:00

Which plugin made a stored result: ``{"name", "distribution", "version"}`` of the embedder
(embedding sets) or the retriever (indexes and neighbour sets), so that a plugin upgrade that
changes results can be traced to what it made. Results stored before this revision keep their
rows and files; their column is NULL (unknown), and nothing is rebuilt for it. SQLite adds the
column with ``ALTER TABLE ... ADD COLUMN`` as PostgreSQL does; the downgrade drops it again.
"""

import sqlalchemy as sa
from alembic import op

revision = "79f34aed8644"
down_revision = "bf9c653d4d9a"
branch_labels = None
depends_on = None

TABLES = ("embedding_sets", "vector_indexes", "neighbour_sets")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("plugin", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("plugin")
