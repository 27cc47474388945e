"""Peak memory of ingesting one large generated document, run as a script in a fresh process
(``python tests/pipeline/ingest_memory.py FOLDER MEGABYTES [TOKENIZER]``): prints a JSON line
with the file's size and the growth of the peak resident memory (VmHWM) during the ingest."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path


def resident() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def write_document(path: Path, size: int) -> None:
    """About ``size`` bytes of code-like text, some of it not ASCII."""
    rng = random.Random(0)
    words = ["def", "return", "self.value", "données", "x", "for", "in", "range(", "):", "\n    "]
    with path.open("w", encoding="utf-8") as handle:
        written = 0
        while written < size:
            line = " ".join(rng.choices(words, k=12)) + "\n"
            handle.write(line)
            written += len(line.encode())


def main(folder: Path, megabytes: float, tokenizer: str = "bytes") -> None:
    from retro_platform.cli.common import open_experiment
    from retro_platform.corpus.ingest import ingest

    corpus = folder / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    document = corpus / "large.txt"
    write_document(document, int(megabytes * 2**20))
    experiment_file = folder / "experiment.toml"
    experiment_file.write_text(
        f'[corpus]\nname = "text-files"\npath = "corpus"\n'
        f'[tokenizer]\nname = "{tokenizer}"\n'
        + ("vocab_size = 512\n" if tokenizer == "bpe" else "")
        + '[store]\npath = "store"\n[retrieval]\nchunk_size = 32\n'
    )
    experiment, store = open_experiment(str(experiment_file))
    before = resident()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
    report = ingest(experiment, store, progress=False)
    store.close()
    print(
        json.dumps(
            {
                "file_bytes": document.stat().st_size,
                "growth_bytes": resident()["VmHWM"] - before,
                "chunks": report.chunks_added,
                "summary": report.summary(),
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]), *sys.argv[3:])
