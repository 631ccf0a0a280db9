"""write_atomic under concurrent writers: each rename is of a complete file, none fails."""

from __future__ import annotations

import threading
from pathlib import Path

from meshagent.atomic_file import write_atomic


def test_concurrent_writers_never_collide(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    errors: list[BaseException] = []
    payloads = [bytes([65 + i]) * (1000 + i) for i in range(8)]

    def writer(data: bytes) -> None:
        try:
            for _ in range(50):
                write_atomic(target, data)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind
