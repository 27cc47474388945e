"""Ingest benchmark (issue 16): rows/s into SQLite, PostgreSQL with COPY, PostgreSQL with row inserts
(and, writing only, one INSERT per row).

    python benchmarks/ingest.py [--quick] [--repeats N] [--max-files N] [--json PATH]

The same corpus (the python-stdlib corpus reader, bytes tokenizer, 64-token chunks: the most
rows per byte of text; ``--quick``: 40 files) goes into a fresh database of each kind, in one
run, two ways:

1. **ingest**: ``retro_platform.corpus.ingest.ingest`` as ``retro-platform ingest`` runs it
   (read, decode, tokenize, chunk, write, one transaction per batch of documents), with
   ``copy=True`` (COPY, the default on PostgreSQL) and ``copy=False`` (row inserts, as before).
2. **write only**: the rows of 1 (read back from the SQLite store, held in memory) written
   again through ``retro_platform.store.bulk`` in the same batches and transactions, so that
   reading and tokenizing the corpus are not in the figure. A fourth way is measured here only:
   **postgresql per-row**, the same rows, batches and transactions, but each document and each
   chunk written by its own ``INSERT`` (``RETURNING id`` for a document), executed one at a time
   on the session's psycopg connection: one statement and one round trip per row, as naive
   code writes (straight to the driver, without an ORM's per-statement cost on top). The store
   never writes this way; it is the yardstick the issue's 5x target most likely assumed. Every
   write-only run is checked afterwards: the row counts, and the content of a few documents
   and their chunks, against the rows written.

Measured (every stdlib file, 190,398 rows, 3 repeats, 2 shared cores): COPY writes 3.3x as fast
as the store's row path (target 5x: not met), and 6.6x as fast as per-row inserts.

PostgreSQL is a throwaway server this script starts (``tests/postgres.py``: ``initdb`` on a
temporary folder, loopback, ``fsync=off``), as the tests do; SQLite is a file in WAL mode with
``synchronous=NORMAL``. Figures are medians of ``--repeats`` runs; JSON goes to
``benchmarks/results/ingest.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import (
    REPO_ROOT,
    cpu_model,
    ensure_repo_on_path,
    fmt_ratio,
    log,
    markdown_table,
    median,
    process_tree_cpu_seconds,
)

ensure_repo_on_path()

os.environ.setdefault("RETRO_PLATFORM_LOAD_PLUGINS", "")  # built-ins only: nothing installed counts

#: The three ways ingest writes rows, in the order of the table.
KINDS = ("sqlite", "postgresql copy", "postgresql rows")
#: One INSERT statement and one round trip per row: the write-only measurement's fourth way.
PER_ROW = "postgresql per-row"
#: The ways the write-only measurement writes rows, in the order of the table.
WRITE_KINDS = (*KINDS, PER_ROW)
#: Documents per transaction in the write-only measurement (ingest's batch).
BATCH_DOCUMENTS = 256
#: Files of the standard library read in --quick.
QUICK_FILES = 40


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 files, 1 repeat: a smoke test")
    parser.add_argument("--repeats", type=int, default=None, help="runs per kind (default 3)")
    parser.add_argument("--max-files", type=int, default=None, help="standard-library files read")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="default: benchmarks/results/ingest.json, "
        "except with --quick (a smoke test does not replace the measured figures)",
    )
    args = parser.parse_args(argv)
    if args.json is None and not args.quick:
        args.json = REPO_ROOT / "benchmarks" / "results" / "ingest.json"
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.max_files = args.max_files or (QUICK_FILES if args.quick else None)
    return args


def write_experiment(folder: Path, url: str, max_files: int | None) -> Path:
    corpus = f"max_files = {max_files}\n" if max_files else ""
    path = folder / "experiment.toml"
    path.write_text(
        f'[experiment]\nname = "ingest-benchmark"\n\n[store]\npath = "store"\nurl = "{url}"\n\n'
        f'[corpus]\nname = "python-stdlib"\n{corpus}\n[tokenizer]\nname = "bytes"\n\n'
        '[retrieval]\nchunk_size = 64\n\n[embedder]\nname = "hashing"\n\n'
        '[retriever]\nname = "faiss-flat"\n'
    )
    return path


class Databases:
    """Fresh databases: SQLite files in a temporary folder, PostgreSQL ones on one server."""

    def __init__(self, root: Path) -> None:
        from tests.postgres import PostgresServer, find_bin_dir

        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise SystemExit("PostgreSQL is not installed (initdb and pg_ctl): cannot compare")
        self.root = root
        self.server = PostgresServer(bin_dir)

    def __enter__(self) -> Databases:
        self.server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.stop()

    def server_cpu_seconds(self) -> float:
        """CPU seconds of the PostgreSQL server's processes alive now (the postmaster and its
        backends: a connection's backend lives until the connection closes)."""
        assert self.server.root is not None
        pid = int((self.server.root / "data" / "postmaster.pid").read_text().split()[0])
        return process_tree_cpu_seconds(pid)

    def fresh(self, kind: str) -> tuple[str, Path]:
        """A new empty database of ``kind`` and a new folder for its experiment."""
        folder = self.root / uuid.uuid4().hex[:12]
        folder.mkdir()
        if kind == "sqlite":
            return f"sqlite:///{folder / 'store' / 'retro.db'}", folder
        name = f"bench_{uuid.uuid4().hex[:12]}"
        self.server.create_database(name)
        return self.server.url(name), folder


# ---------------------------------------------------------------------------------------------
# the measurements
# ---------------------------------------------------------------------------------------------


def measure_ingest(databases: Databases, kind: str, max_files: int | None) -> dict[str, Any]:
    """One ``ingest`` into a fresh database of ``kind``: seconds, documents, chunks."""
    from retro_platform.cli.common import open_experiment
    from retro_platform.corpus.ingest import ingest

    url, folder = databases.fresh(kind)
    experiment, store = open_experiment(write_experiment(folder, url, max_files))
    try:
        clock = Clock(databases, kind)
        report = ingest(experiment, store, progress=False, copy=kind != "postgresql rows")
        measured = clock.stop()  # before the connection (its server process) closes
    finally:
        store.close()
    return {**measured, "documents": report.documents, "chunks": report.chunks, "url": url}


def row_columns() -> tuple[list[Any], list[Any]]:
    """The columns of a document row and of a chunk row as the benchmark holds them (those
    ``retro_platform.store.bulk`` is given: no ids, no ``created_at``)."""
    from retro_platform.store.models import Chunk, Document

    document_columns = [c for c in Document.__table__.columns if c.name not in ("id", "created_at")]
    chunk_columns = [c for c in Chunk.__table__.columns if c.name not in ("id", "document_id")]
    return document_columns, chunk_columns


def read_rows(url: str) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every document row of the store at ``url`` with its chunk rows, as ingest wrote them."""
    from sqlalchemy import select

    from retro_platform.store.database import open_store
    from retro_platform.store.models import Chunk, Document

    document_columns, chunk_columns = row_columns()
    with (
        tempfile.TemporaryDirectory() as files,
        open_store(url, files) as store,
        store.session() as session,
    ):
        chunks: dict[int, list[dict[str, Any]]] = {}
        for row in session.execute(
            select(Chunk.document_id, *chunk_columns).order_by(Chunk.id)
        ).mappings():
            chunks.setdefault(row["document_id"], []).append(
                {c.name: row[c.name] for c in chunk_columns}
            )
        return [
            ({c.name: row[c.name] for c in document_columns}, chunks.get(row["id"], []))
            for row in session.execute(
                select(Document.id, *document_columns).order_by(Document.id)
            ).mappings()
        ]


def insert_per_row(session: Any, table: Any, rows: Any, ids: list[int] | None = None) -> int:
    """``rows`` (dicts of ``table``'s columns, as ``retro_platform.store.bulk`` takes them)
    inserted the naive way: one ``INSERT`` per row, each executed on its own by the session's
    psycopg connection (inside its transaction), no executemany, no pipeline. The columns are
    the first row's plus those with a Python-side default, filled in as ``bulk`` fills them.
    Given ``ids``, each statement returns its row's new ``id``, appended there. Returns how
    many rows."""
    import json

    from psycopg.types.json import Json
    from sqlalchemy import JSON

    from retro_platform.store.bulk import _default

    raw = session.connection().connection.driver_connection
    count, statement = 0, None
    with raw.cursor() as cursor:
        for row in rows:
            if statement is None:
                defaults = {
                    column.name: column.default
                    for column in table.columns
                    if column.default is not None and column.name not in row
                }
                names = [*row, *defaults]
                json_names = {n for n in names if isinstance(table.columns[n].type, JSON)}
                columns = ", ".join(f'"{name}"' for name in names)
                placeholders = ", ".join(["%s"] * len(names))
                statement = f'INSERT INTO "{table.name}" ({columns}) VALUES ({placeholders})'
                statement += "" if ids is None else " RETURNING id"
            values = [
                Json(row[n], dumps=json.dumps) if n in json_names and row[n] is not None else row[n]
                for n in row
            ]
            cursor.execute(statement, [*values, *(_default(d) for d in defaults.values())])
            if ids is not None:
                ids.append(cursor.fetchone()[0])
            count += 1
    return count


def insert_documents_per_row(session: Any, rows: list[dict[str, Any]]) -> list[int]:
    """``bulk.insert_documents`` the naive way: one ``INSERT ... RETURNING id`` per row."""
    from retro_platform.store.models import Document

    ids: list[int] = []
    insert_per_row(session, Document.__table__, rows, ids)
    return ids


def insert_chunks_per_row(session: Any, rows: Any) -> int:
    """``bulk.insert_chunks`` the naive way: one ``INSERT`` per row."""
    from retro_platform.store.models import Chunk

    return insert_per_row(session, Chunk.__table__, rows)


def check_written(store: Any, rows: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
    """The store holds exactly the rows written: as many documents and chunks, and (a cheap
    sample) the first, middle and last documents with their chunks, column for column."""
    from sqlalchemy import func, select

    from retro_platform.store.models import Chunk, Document

    document_columns, chunk_columns = row_columns()
    document_columns = [c for c in document_columns if c.name != "corpus_id"]
    with store.session() as session:
        counts = (
            session.scalar(select(func.count()).select_from(Document)),
            session.scalar(select(func.count()).select_from(Chunk)),
        )
        assert counts == (len(rows), sum(len(chunks) for _, chunks in rows)), counts
        ids = session.scalars(select(Document.id).order_by(Document.id)).all()
        for i in sorted({0, len(rows) // 2, len(rows) - 1}):
            document, chunks = rows[i]
            stored = (
                session.execute(select(*document_columns).where(Document.id == ids[i]))
                .mappings()
                .one()
            )
            assert {c.name: stored[c.name] for c in document_columns} == {
                c.name: document[c.name] for c in document_columns
            }, i
            stored_chunks = session.execute(
                select(*chunk_columns).where(Chunk.document_id == ids[i]).order_by(Chunk.id)
            ).mappings()
            assert [{c.name: row[c.name] for c in chunk_columns} for row in stored_chunks] == [
                {c.name: chunk[c.name] for c in chunk_columns} for chunk in chunks
            ], i


def measure_writes(
    databases: Databases, kind: str, rows: list[tuple[dict[str, Any], list[dict[str, Any]]]]
) -> dict[str, Any]:
    """The rows written into a fresh database of ``kind`` as ingest writes them: batches of
    documents, each batch's documents then chunks in one transaction (``PER_ROW``: the same,
    one statement per row)."""
    from retro_platform.store.bulk import insert_chunks, insert_documents
    from retro_platform.store.database import open_store
    from retro_platform.store.models import Corpus

    url, folder = databases.fresh(kind)
    copy = kind not in ("postgresql rows", PER_ROW)
    write_documents = insert_documents_per_row if kind == PER_ROW else insert_documents
    write_chunks = insert_chunks_per_row if kind == PER_ROW else insert_chunks
    options = {} if kind == PER_ROW else {"copy": copy}
    with open_store(url, folder / "store") as store:
        with store.session() as session:
            corpus = Corpus(
                fingerprint="benchmark", reader="python-stdlib", reader_options={},
                tokenizer="bytes", tokenizer_options={}, tokenizer_file=None, vocab_size=256,
                pad_id=0, chunk_size=64, version=0,
            )  # fmt: skip
            session.add(corpus)
        written = 0
        clock = Clock(databases, kind)
        for start in range(0, len(rows), BATCH_DOCUMENTS):
            batch = rows[start : start + BATCH_DOCUMENTS]
            with store.session() as session:
                documents = [{**document, "corpus_id": corpus.id} for document, _ in batch]
                ids = write_documents(session, documents, **options)
                written += len(ids) + write_chunks(
                    session,
                    (
                        {**chunk, "document_id": document_id}
                        for document_id, (_, chunks) in zip(ids, batch, strict=True)
                        for chunk in chunks
                    ),
                    **options,
                )
        measured = clock.stop()
        check_written(store, rows)
    return {**measured, "rows": written}


class Clock:
    """Wall seconds, and the CPU seconds of this process and (PostgreSQL) the server's, from
    now to :meth:`stop`. CPU time is what the two cores spent on the work, whatever else ran
    on them meanwhile; wall time is what a user waits."""

    def __init__(self, databases: Databases, kind: str) -> None:
        self.databases = databases
        self.server = kind != "sqlite"
        self.wall = time.perf_counter()
        self.client = time.process_time()
        self.server_cpu = databases.server_cpu_seconds() if self.server else 0.0

    def stop(self) -> dict[str, float]:
        server = self.databases.server_cpu_seconds() - self.server_cpu if self.server else 0.0
        return {
            "seconds": time.perf_counter() - self.wall,
            "client_cpu": time.process_time() - self.client,
            "server_cpu": server,
        }


# ---------------------------------------------------------------------------------------------
# the run and the report
# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "corpus": {"reader": "python-stdlib", "max_files": args.max_files, "tokenizer": "bytes"},
        "repeats": args.repeats,
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count()},
        "ingest": {kind: [] for kind in KINDS},
        "write_only": {kind: [] for kind in WRITE_KINDS},
    }
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as root, Databases(Path(root)) as dbs:
        rows = None
        for repeat in range(args.repeats):
            for kind in KINDS:  # interleaved, so that a noisy moment hits every kind alike
                log(f"ingest {repeat + 1}/{args.repeats}: {kind}")
                measured = measure_ingest(dbs, kind, args.max_files)
                if rows is None and kind == "sqlite":
                    rows = read_rows(measured["url"])
                del measured["url"]
                results["ingest"][kind].append(measured)
        assert rows is not None
        for repeat in range(args.repeats):
            for kind in WRITE_KINDS:
                log(f"write only {repeat + 1}/{args.repeats}: {kind}")
                results["write_only"][kind].append(measure_writes(dbs, kind, rows))
    results["documents"] = len(rows)
    results["chunks"] = sum(len(chunks) for _, chunks in rows)
    counts = {(m["documents"], m["chunks"]) for runs in results["ingest"].values() for m in runs}
    assert counts == {(results["documents"], results["chunks"])}, counts  # same rows everywhere
    written = {m["rows"] for runs in results["write_only"].values() for m in runs}
    assert written == {results["documents"] + results["chunks"]}, written
    return results


def summarize(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Medians per kind: ingest seconds and rows/s (None for ``PER_ROW``, measured writing
    only), write-only seconds and rows/s."""
    rows = results["documents"] + results["chunks"]
    summary = {}
    for kind in WRITE_KINDS:
        ingested = results["ingest"].get(kind, [])
        ingest_s = median([m["seconds"] for m in ingested])
        write_s = median([m["seconds"] for m in results["write_only"][kind]])
        summary[kind] = {
            "ingest_seconds": ingest_s,
            "ingest_rows_per_s": rows / ingest_s if ingest_s else None,
            "ingest_cpu": median([m["client_cpu"] + m["server_cpu"] for m in ingested]),
            "write_seconds": write_s,
            "write_rows_per_s": rows / write_s,
            "write_cpu": median(
                [m["client_cpu"] + m["server_cpu"] for m in results["write_only"][kind]]
            ),
            "write_server_cpu": median([m["server_cpu"] for m in results["write_only"][kind]]),
        }
    return summary


def report(results: dict[str, Any]) -> str:
    summary = results["summary"]
    base, naive = summary["postgresql rows"], summary[PER_ROW]

    def number(value: float | None, form: str) -> str:
        return "—" if value is None else format(value, form)

    table = markdown_table(
        ["store", "ingest s", "ingest rows/s", "vs PG rows", "ingest CPU s", "write-only s",
         "write rows/s", "vs PG rows", "vs PG per-row", "write CPU s (server)"],
        [
            [
                kind,
                number(s["ingest_seconds"], ".2f"),
                number(s["ingest_rows_per_s"], ",.0f"),
                fmt_ratio(base["ingest_seconds"], s["ingest_seconds"]),
                number(s["ingest_cpu"], ".2f"),
                f"{s['write_seconds']:.2f}",
                f"{s['write_rows_per_s']:,.0f}",
                fmt_ratio(base["write_seconds"], s["write_seconds"]),
                fmt_ratio(naive["write_seconds"], s["write_seconds"]),
                f"{s['write_cpu']:.2f} ({s['write_server_cpu']:.2f})",
            ]
            for kind, s in summary.items()
        ],
    )  # fmt: skip
    copy = summary["postgresql copy"]
    tokenizing = copy["ingest_seconds"] - copy["write_seconds"]
    corpus = results["corpus"]
    files = f"{corpus['max_files']} files" if corpus["max_files"] else "every file"
    return "\n".join(
        [
            "# Ingest benchmark",
            "",
            f"- corpus: python-stdlib ({files}), bytes tokenizer, 64-token chunks: "
            f"{results['documents']:,} documents + {results['chunks']:,} chunks = "
            f"{results['documents'] + results['chunks']:,} rows",
            f"- medians of {results['repeats']} runs; CPU: {results['machine']['cpu']}, "
            f"{results['machine']['cpu_count']} cores; PostgreSQL on loopback, fsync off; "
            "CPU s: this process plus the PostgreSQL server's processes",
            f"- {PER_ROW}: writing only, one INSERT statement and one round trip per row "
            "(the store never writes this way)",
            "",
            table,
            "",
            f"COPY against row inserts: {fmt_ratio(base['ingest_seconds'], copy['ingest_seconds'])}"
            f" for the whole ingest, {fmt_ratio(base['write_seconds'], copy['write_seconds'])} "
            "for the writing alone (target: 5×); in CPU seconds (client + server) "
            f"{fmt_ratio(base['ingest_cpu'], copy['ingest_cpu'])} and "
            f"{fmt_ratio(base['write_cpu'], copy['write_cpu'])}. Against one INSERT per row, "
            f"COPY writes {fmt_ratio(naive['write_seconds'], copy['write_seconds'])} as fast "
            f"({fmt_ratio(naive['write_cpu'], copy['write_cpu'])} in CPU seconds) and the "
            f"store's row path {fmt_ratio(naive['write_seconds'], base['write_seconds'])}. "
            "Reading, decoding, tokenizing and cutting "
            f"chunks take about {tokenizing:.2f} s of the COPY ingest's "
            f"{copy['ingest_seconds']:.2f} s (ingest minus write only), the same on every store.",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = run(args)
    results["summary"] = summarize(results)
    print(report(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
