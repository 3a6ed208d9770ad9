"""The output folder of a run: checked before any heavy work, recognised by zorba's own marker, and
replaced only whole.

Why a marker: `--overwrite` deletes a folder, so it must be sure the folder is a zorba run and holds
nothing else (not `.`, not a home folder, not the training data). A folder counts as a zorba run only
when it holds the marker file and no name zorba does not write.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from zorba.errors import UserError

MARKER = ".zorba-run"
_MARKER_TEXT = "This folder holds a zorba run; `zorba run --overwrite` may replace it whole.\n"
_OUTPUTS = {MARKER, "state", "result.json", "report.md", "plot.png", "log.jsonl", "model"}
_TEMP_PREFIXES = (".staging-",)


def write_marker(folder: Path) -> None:
    (folder / MARKER).write_text(_MARKER_TEXT)


def is_zorba_run(folder: Path) -> bool:
    """The marker is there and every entry is one zorba writes."""
    if folder.is_symlink() or not (folder / MARKER).is_file():
        return False
    return all(p.name in _OUTPUTS or p.name.startswith(_TEMP_PREFIXES) for p in folder.iterdir())


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse, with one line, an output folder the run could not write or must not replace."""
    if out.is_symlink():
        raise UserError(f"{out}: is a symbolic link; give the folder itself as --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    _check_writable(_nearest_existing(out), out)
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(f"{out}: output folder exists and is not empty (pass --overwrite or another --out)")
    if not is_zorba_run(out):
        raise UserError(f"{out}: --overwrite replaces only a folder holding a zorba run (its {MARKER} marker and "
                        "nothing else); this one holds other files, not touching it")


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(folder: Path, out: Path) -> None:
    """Probe by creating (and removing) a folder: permission bits, read-only mounts and /proc alike."""
    if not folder.is_dir():
        raise UserError(f"{out}: {folder} is not a folder, so nothing can be written under it")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".zorba-probe-", dir=folder))
    except OSError as exc:
        raise UserError(f"{out}: cannot write in {folder} ({exc.strerror or type(exc).__name__})") from None


def build_dir_beside(out: Path) -> Path:
    """A fresh temporary folder next to `out` (same file system, so a rename moves it into place)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.zorba-new-", dir=out.parent))


def replace_dir(new: Path, out: Path) -> None:
    """Move the finished folder `new` to `out`; an old `out` is replaced only if it is a zorba run.
    Two renames: a crash between them leaves both folders beside `out`, never a half-written one."""
    if out.exists() and any(out.iterdir()) and not is_zorba_run(out):
        raise UserError(f"{out}: holds files zorba did not write; the finished run stays in {new}")
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.zorba-old-", dir=out.parent))
        os.rmdir(old)
        os.rename(out, old)
    os.rename(new, out)
    if old is not None:
        shutil.rmtree(old)
