"""Document metadata: a nullable JSON column ``documents.meta``.

Revision ID: bf9c653d4d9a
Revises: ef48affcf5f2
Create Date: 2026-12-02 14:13:19.053830

What a corpus reader knows about a document beyond its text (``SourceDocument.metadata``, such
as the version of the package a source file came from). Stored documents keep their rows and
chunks: the column is added empty (NULL), with ``ALTER TABLE ... ADD COLUMN`` on SQLite as on
PostgreSQL (batch mode rebuilds no table for an added nullable column), and a later ingest
fills it in for documents whose reader reports metadata. The downgrade drops the column (on
SQLite by rebuilding the table, its rows copied).
"""

import sqlalchemy as sa
from alembic import op

revision = "bf9c653d4d9a"
down_revision = "ef48affcf5f2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch_op:
        batch_op.add_column(sa.Column("meta", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("documents") as batch_op:
        batch_op.drop_column("meta")
