"""The files `sagalocal up` writes for others to read (its ready file, .local/stack.json): a reader that polls for
one sees it absent or whole, never created and still being written (a loaded make test once read an empty ready
file and failed its stack's start)."""

from __future__ import annotations

import json
import threading

from sagalocal.cli import write_whole


def test_a_reader_polling_for_the_file_never_sees_it_partly_written(tmp_path):
    path = tmp_path / "ready.json"
    text = json.dumps({"outputs": {f"Output{n}": "x" * 200 for n in range(5_000)}})  # ~1 MB: many writes' worth
    seen, done = [], threading.Event()

    def read() -> None:
        while not done.is_set():
            if path.exists():
                seen.append(path.read_text())
                path.unlink()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20):
            write_whole(path, text)
            while path.exists() and reader.is_alive():  # until the reader took it
                pass
    finally:
        done.set()
        reader.join(10)
    assert seen, "the reader never saw the file"
    assert all(found == text for found in seen), sorted({len(found) for found in seen})
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing left beside it
