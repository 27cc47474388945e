"""Writing many rows at once: PostgreSQL's ``COPY`` on PostgreSQL, row inserts elsewhere.

Ingest writes every document and chunk of a corpus through :func:`insert_documents` and
:func:`insert_chunks`, in the caller's transaction. On PostgreSQL they stream the rows through
``COPY ... FROM STDIN (FORMAT BINARY)`` on the session's own psycopg connection: one statement
per call instead of one parameter set per row, and no text escaping of the chunks' token bytes.
Elsewhere (SQLite), and on PostgreSQL with ``copy=False`` (the benchmark's and the tests'
comparison), they are executemany inserts of :data:`INSERT_ROWS` rows at a time.

Both paths give the same rows: the same ids in the same order (a document's id is drawn from
its table's sequence before the copy, in the order given, as ``INSERT ... RETURNING`` would
draw it; a chunk's from its column default, row by row in the order given), and the same
values, the columns' Python-side defaults (``created_at``) included.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import JSON, Table, insert, text
from sqlalchemy.orm import Session

from retro_platform.store.models import Chunk, Document

#: Rows per INSERT on the row path: a large document's chunks go in in slices, never all
#: held at once.
INSERT_ROWS = 4096


def uses_copy(session: Session, copy: bool = True) -> bool:
    """Whether rows go in by ``COPY``: on PostgreSQL unless ``copy=False``. The one place the
    dialect decides how ingest writes."""
    return copy and session.get_bind().dialect.name == "postgresql"


def insert_documents(
    session: Session, rows: list[dict[str, Any]], *, copy: bool = True
) -> list[int]:
    """Insert document rows (dicts of :class:`Document` columns, without ``id``); return their
    new ids in the order of ``rows``."""
    if not rows:
        return []
    if not uses_copy(session, copy):
        returning = insert(Document).returning(Document.id, sort_by_parameter_order=True)
        return list(session.scalars(returning, rows).all())
    # ids drawn first, so the copied rows carry them: what RETURNING gives the row path
    ids = sorted(
        session.scalars(
            text(
                "SELECT nextval(pg_get_serial_sequence('documents', 'id')) FROM generate_series(1, :n)"
            ),
            {"n": len(rows)},
        )
    )
    _copy(
        session,
        Document.__table__,
        ({**row, "id": id_} for id_, row in zip(ids, rows, strict=True)),
    )
    return ids


def insert_chunks(session: Session, rows: Iterable[dict[str, Any]], *, copy: bool = True) -> int:
    """Insert chunk rows (dicts of :class:`Chunk` columns, without ``id``) as they come, never
    holding them all; return how many."""
    if uses_copy(session, copy):
        return _copy(session, Chunk.__table__, iter(rows))
    count = 0
    rows = iter(rows)
    while part := list(itertools.islice(rows, INSERT_ROWS)):
        session.execute(insert(Chunk), part)
        count += len(part)
    return count


def _copy(session: Session, table: Table, rows: Iterator[dict[str, Any]]) -> int:
    """``COPY table FROM STDIN`` the ``rows``, in binary, on the session's connection (inside
    its transaction); return how many. The columns are those of the first row plus every
    column with a Python-side default; their types are read from the database."""
    from psycopg.types.json import Json  # lazy: psycopg is installed only for PostgreSQL

    first = next(rows, None)
    if first is None:
        return 0
    defaults = {
        column.name: column.default
        for column in table.columns
        if column.default is not None and column.name not in first
    }
    names = [*first, *defaults]
    json_positions = [
        i for i, name in enumerate(names) if isinstance(table.columns[name].type, JSON)
    ]
    connection = session.connection()
    types = dict(
        connection.execute(
            text(
                "SELECT column_name, udt_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = :table"
            ),
            {"table": table.name},
        ).all()
    )
    columns = ", ".join(f'"{name}"' for name in names)
    statement = f'COPY "{table.name}" ({columns}) FROM STDIN (FORMAT BINARY)'
    raw = connection.connection.driver_connection
    count = 0
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types([types[name] for name in names])
        for row in itertools.chain([first], rows):
            values = [row[name] for name in first]
            values += [_default(default) for default in defaults.values()]
            for position in json_positions:
                if values[position] is not None:
                    values[position] = Json(values[position], dumps=json.dumps)
            copy.write_row(values)
            count += 1
    return count


def _default(default: Any) -> Any:
    """A column's Python-side default value, as SQLAlchemy would fill it in on insert."""
    if default.is_callable:
        return default.arg(None)  # SQLAlchemy wraps a no-argument function to take a context
    return default.arg
