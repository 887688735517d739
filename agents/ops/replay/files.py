"""Recording files on disk: JSON lines (``pipeline.replay.recording``), zstd-compressed
when the name ends in ``.zst``; read back either way, told by the first bytes."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import zstandard

from pipeline.replay import Recorded, RecordingHeader, ReplayError


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_LEVEL = 10  # JSON lines shrink ~10x; level 10 still writes ~50 MB/s


# ------------------------------------------------------------------------------- files


def write_recording(path: Path, header: RecordingHeader, records: Iterable[Recorded]) -> int:
    """Write ``records`` after ``header``; zstd when ``path`` ends in ``.zst``. Written to a
    temporary name first, so a failed capture leaves no half file behind."""
    partial = path.with_name(path.name + ".partial")
    count = 0
    try:
        with partial.open("wb") as raw:
            out: IO[bytes] = raw
            compressor = None
            if path.suffix == ".zst":
                compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).stream_writer(
                    raw, closefd=False)
                out = compressor
            out.write(header.to_line() + b"\n")
            for record in records:
                out.write(record.to_line() + b"\n")
                count += 1
            if compressor is not None:
                compressor.close()
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return count


def read_recording(path: Path) -> tuple[RecordingHeader, list[Recorded]]:
    """A recording's header and records (compressed or not: told by its first bytes)."""
    if not path.is_file():
        raise ReplayError(f"{path} is not a file; record one with `streamserve replay capture "
                          f"--out {path}`")
    with path.open("rb") as raw:
        lines = _lines(raw)
        try:
            header = RecordingHeader.from_line(next(lines, b""), str(path))
            records = [Recorded.from_line(line, f"{path}:{n}")
                       for n, line in enumerate(lines, start=2) if line.strip()]
        except zstandard.ZstdError as e:  # a damaged file
            raise ReplayError(f"{path} cannot be read ({e}); capture it again") from None
    if header.records is not None and header.records != len(records):
        raise ReplayError(f"{path} holds {len(records)} records but was written with "
                          f"{header.records}: it is truncated; capture it again")
    return header, records


def _lines(raw: IO[bytes]) -> Iterator[bytes]:
    magic = raw.read(4)
    raw.seek(0)
    if magic == _ZSTD_MAGIC:
        yield from io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
    else:
        yield from raw
