"""Durable, append-only storage for a run's state folder (DIR/state/): a round counts only once its
log entry is on disk.

Why this layout: the log *is* the checkpoint (base weights + replay = global weights), so the only
thing a crash may lose is work that was not yet logged, and that work is re-done bit-identically
from the seeds. Files:

- header.json: config, base model id and content hash, format version, and the sha256 of all that
  (so a flipped bit or a hand edit of, say, mu is refused, not resumed with). Written once,
  atomically (temp file, fsync, rename, fsync of the folder), so it is either absent or complete.
- log.bin: the round log, one record per round: <u32 length><u32 crc32><codec.encode_entry bytes>.
- rounds.bin: the runner's per-round records (metrics, evaluations), framed the same way, as JSON.

Appends are written, flushed and fsynced before the caller goes on; the folder is fsynced when a file
is created. A record cut short by a crash (a torn tail) is detected by its length or CRC; opening a
store changes nothing, and the torn tail is cut only by `repair`, once the caller's checks passed.
Damage anywhere before the tail (a flipped length that makes valid records look like a torn tail
included: a valid record after it gives it away) is reported, never repaired.

Test hook: ZORBA_CRASH_AT="<point>:<n>" makes the process SIGKILL itself the n-th time (1-based) it
reaches `crash_point(<point>)`. It exists so tests can kill a run at chosen places, mid-write included.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import zlib
from collections import Counter
from pathlib import Path

from zorba.errors import UserError
from zorba.wire import codec
from zorba.wire.protocol import LogEntry

FORMAT = "zorba-state/2"  # /2: the header carries its own sha256
OLD_FORMATS = ("zorba-state/1",)
_FRAME = struct.Struct("<II")
MAX_RECORD = 1 << 30  # a length above this is damage, not a record
_hits: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """SIGKILL this process here when ZORBA_CRASH_AT names this point and hit count (test hook)."""
    spec = os.environ.get("ZORBA_CRASH_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def header_digest(header: dict) -> str:
    """sha256 of the header's canonical JSON, without its own digest field."""
    body = {k: v for k, v in header.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sealed(header: dict) -> dict:
    return {**header, "sha256": header_digest(header)}


class AppendLog:
    """A file of framed records that only grows; `records` are those that were fully written.
    `magic` is how every payload starts: it lets a damaged length be told from a torn tail."""

    def __init__(self, path: Path, magic: bytes) -> None:
        self.path, self.magic = path, magic
        data = path.read_bytes() if path.exists() else b""
        self.records, self.valid_end = self._scan(data)
        self.torn = len(data) - self.valid_end

    def _scan(self, data: bytes) -> tuple[list[bytes], int]:
        records, pos = [], 0
        while pos < len(data):
            if pos + _FRAME.size > len(data):
                break  # torn header
            length, crc = _FRAME.unpack_from(data, pos)
            end = pos + _FRAME.size + length
            if length > MAX_RECORD or end > len(data):
                self._refuse_if_records_follow(data, pos, len(records))
                break  # torn payload
            payload = data[pos + _FRAME.size : end]
            if zlib.crc32(payload) != crc:
                if end == len(data):
                    break  # the last record was being written when the process died
                raise UserError(f"{self.path}: record {len(records)} is damaged (checksum mismatch); not resuming")
            records.append(payload)
            pos = end
        return records, pos

    def _refuse_if_records_follow(self, data: bytes, pos: int, index: int) -> None:
        """A torn tail is one partly written record, so no valid record can follow it."""
        at = data.find(self.magic, pos + _FRAME.size + 1)
        while at != -1:
            start = at - _FRAME.size
            length, crc = _FRAME.unpack_from(data, start)
            if length <= len(data) - at and zlib.crc32(memoryview(data)[at : at + length]) == crc:
                raise UserError(f"{self.path}: record {index} is damaged (its length is wrong, valid records "
                                "follow it); not resuming")
            at = data.find(self.magic, at + 1)

    def repair(self) -> None:
        """Create the file, or cut its torn tail: only after every check of the caller passed."""
        if not self.path.exists():
            self.path.touch()
            fsync_dir(self.path.parent)
        if self.torn:
            with open(self.path, "r+b") as f:
                f.truncate(self.valid_end)
                os.fsync(f.fileno())
            self.torn = 0

    def append(self, payload: bytes) -> None:
        self.repair()
        record = frame(payload)
        with open(self.path, "ab") as f:
            half = len(record) // 2
            f.write(record[:half])
            f.flush()
            crash_point(f"{self.path.stem}-torn")  # lets tests die between the two halves of a write
            f.write(record[half:])
            f.flush()
            os.fsync(f.fileno())
        self.records.append(payload)
        self.valid_end += len(record)


class RunStore:
    """The state folder of one run: its header, its durable round log and its per-round records."""

    def __init__(self, folder: Path, header: dict) -> None:
        self.folder, self.header = folder, header
        self._log = AppendLog(folder / "log.bin", b"ZL")  # every version of codec.encode_entry (ZL1, ZL2)
        self._rounds = AppendLog(folder / "rounds.bin", b"{")
        self.entries = [_decode_entry(folder, i, raw) for i, raw in enumerate(self._log.records)]
        self.records = [_decode_record(folder, i, raw) for i, raw in enumerate(self._rounds.records)]

    @classmethod
    def create(cls, folder: Path, header: dict) -> RunStore:
        """A new state folder; the header goes in last-to-first safe order (folder, then header)."""
        folder.mkdir(parents=True, exist_ok=False)
        fsync_dir(folder.parent)
        header = sealed({"format": FORMAT, **header})
        write_atomic(folder / "header.json", json.dumps(header, indent=2).encode())
        store = cls(folder, header)
        store.repair()
        return store

    @classmethod
    def open(cls, folder: Path) -> RunStore:
        path = folder / "header.json"
        if not path.is_file():
            raise UserError(f"{folder.parent}: no resumable run here (missing {path.name} in {folder.name}/)")
        try:
            header = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: unreadable run header ({type(exc).__name__})") from None
        check_header(path, header)
        return cls(folder, header)

    def repair(self) -> None:
        """Make the files appendable (cut torn tails): call once every check on the store passed."""
        self._log.repair()
        self._rounds.repair()

    def append_entry(self, entry: LogEntry) -> None:
        if entry.round != len(self.entries):
            raise ValueError(f"log entry for round {entry.round}, the durable log has {len(self.entries)}")
        self._log.append(codec.encode_entry(entry))
        self.entries.append(entry)

    def append_record(self, record: dict) -> None:
        self._rounds.append(json.dumps(record, separators=(",", ":")).encode())
        self.records.append(record)


def check_header(path: Path, header: object) -> None:
    """The header is of this format and its checksum holds; one line naming what is wrong if not."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else None
        why = " (written before headers were checksummed; it cannot be checked, so it is not resumed)" \
            if got in OLD_FORMATS else ""
        raise UserError(f"{path}: state format {got!r}, this zorba reads {FORMAT!r}{why}")
    if header.get("sha256") != header_digest(header):
        raise UserError(f"{path}: damaged or edited (its sha256 does not match its content); not using it")


def _decode_entry(folder: Path, i: int, raw: bytes) -> LogEntry:
    try:
        entry = codec.decode_entry(raw)
    except codec.DecodeError as exc:
        raise UserError(f"{folder / 'log.bin'}: entry {i} is not a log entry ({exc})") from None
    if entry.round != i:
        raise UserError(f"{folder / 'log.bin'}: entry {i} is for round {entry.round}")
    return entry


def _decode_record(folder: Path, i: int, raw: bytes) -> dict:
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise UserError(f"{folder / 'rounds.bin'}: record {i} is not a JSON object")
    return record
