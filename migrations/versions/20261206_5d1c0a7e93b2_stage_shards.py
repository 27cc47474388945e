"""Stage shards: a table ``stage_shards`` of the slices of an embedding or neighbour set that
several processes build at once.

Revision ID: 5d1c0a7e93b2
Revises: 79f34aed8644
Create Date: 2026-12-06 08:00:00

``retro-platform index --shard i/N`` (and the ranks of a ``torchrun`` job) split an embedding
set's chunks, and a neighbour set's queries, into contiguous slices; each slice's progress is
a row here (its own ``done``, ``status`` and file), so a killed process resumes its own slice
only. Nothing stored before this revision changes: the table starts empty, and the downgrade
drops it (a set being built in slices then starts again from its first row).
"""

import sqlalchemy as sa
from alembic import op

revision = "5d1c0a7e93b2"
down_revision = "79f34aed8644"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "stage_shards",
        sa.Column("id", Id, nullable=False),
        sa.Column("embedding_set_id", Id, nullable=True),
        sa.Column("neighbour_set_id", Id, nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("shards", sa.Integer(), nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("file", sa.String(length=1024), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("plugin", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["embedding_set_id"],
            ["embedding_sets.id"],
            name=op.f("fk_stage_shards_embedding_set_id_embedding_sets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["neighbour_set_id"],
            ["neighbour_sets.id"],
            name=op.f("fk_stage_shards_neighbour_set_id_neighbour_sets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stage_shards")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_stage_shards_fingerprint")),
        sa.UniqueConstraint(
            "embedding_set_id", "shard", name=op.f("uq_stage_shards_embedding_set_id")
        ),
        sa.UniqueConstraint(
            "neighbour_set_id", "shard", name=op.f("uq_stage_shards_neighbour_set_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("stage_shards")
