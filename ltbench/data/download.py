"""``ltbench data download isic2018|isic2019 --to DIR``: the official ISIC challenge archives.

Files come from the ISIC challenge bucket (https://challenge.isic-archive.com/data/, served from
``https://isic-challenge-data.s3.amazonaws.com/<year>/<file>``; the same URLs as FLamby's
``fed_isic2019`` download script and the ISIC landing site). For tests or a mirror the base URL can
be replaced with the environment variable ``LTBENCH_DOWNLOAD_URL`` (``<base>/<year>/<file>``).

Each file is fetched into ``DIR/<file>.part`` with a progress bar (tqdm, on a terminal), resumed
with an HTTP ``Range`` request when a ``.part`` is already there, checked, then renamed to
``DIR/<file>``. Checks: the byte count the server declared (``Content-Length`` / ``Content-Range``),
and the size and MD5 kept in :data:`CATALOGUE` where they are known. **No exact size or checksum of
these files is published anywhere we could find**: the ISIC challenge site's data page gives sizes
rounded to two or three digits (``Download (9.1GB)``; ImageMarkup/stade,
``stade/core/templates/data/2018.html`` and ``2019.html``), which the catalogue keeps as ``approx``
for ``--dry-run`` only (too coarse to check a file against: "1MB" for a 1.29 MB CSV); FLamby's
``fed_isic2019`` download script (owkin/FLamby, ``flamby/datasets/fed_isic2019/dataset_creation_scripts/
download_isic.py``) checks only that the zip opens; no other public download script or dataset wrapper
we found pins a checksum. So only the server's declared size is checked, and the catalogue never holds
a guessed value. A file that fails a check is refused and kept for inspection (the message names it;
delete it to download again). Zips are then extracted into ``DIR`` in the official layout (the
layout ``ltbench.data.isic`` reads), refusing the whole archive if any entry is an absolute path or
climbs out of ``DIR`` (``../``); the ground-truth CSVs that the 2018 zips keep in a folder are
copied to ``DIR`` itself.

Offline (or blocked) the command fails with one line saying what to download by hand and where to
put it; a file put there by hand is verified and extracted by a rerun.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable

from ltbench.errors import LtbenchError

BASE_URL = "https://isic-challenge-data.s3.amazonaws.com"
URL_ENV = "LTBENCH_DOWNLOAD_URL"
CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class Archive:
    """One official file: its name in the bucket's ``year`` folder and what is known about it."""

    name: str
    year: str
    what: str
    size: int | None = None  # bytes; None: not published (the server's declared size is checked)
    md5: str | None = None  # None: not published
    approx: str = ""  # the ISIC site's rounded size, shown by --dry-run when the exact one is unknown (never checked)

    def url(self, base: str) -> str:
        return f"{base.rstrip('/')}/{self.year}/{self.name}"

    @property
    def is_zip(self) -> bool:
        return self.name.endswith(".zip")


# The files ltbench's loaders read (ltbench/data/isic.py). Exact sizes/MD5: none published (module doc).
# approx: the sizes the ISIC challenge site's data page shows, rounded as it rounds them — ImageMarkup/stade
# stade/core/templates/data/2019.html (commit 2045a900) and data/2018.html (commit bc36a40b).
CATALOGUE: dict[str, tuple[Archive, ...]] = {
    "isic2019": (
        Archive("ISIC_2019_Training_Input.zip", "2019", "training images (25,331 JPEGs)", approx="9.1GB"),
        Archive("ISIC_2019_Training_GroundTruth.csv", "2019", "training labels", approx="1MB"),
        Archive("ISIC_2019_Training_Metadata.csv", "2019", "training metadata (lesion ids)", approx="1MB"),
    ),
    "isic2018": (
        Archive("ISIC2018_Task3_Training_Input.zip", "2018", "Task 3 training images (10,015 JPEGs)", approx="2.6GB"),
        Archive("ISIC2018_Task3_Training_GroundTruth.zip", "2018", "Task 3 training labels", approx="36KB"),
        Archive("ISIC2018_Task3_Training_LesionGroupings.csv", "2018", "Task 3 training lesion ids", approx="481KB"),
        Archive("ISIC2018_Task3_Validation_Input.zip", "2018", "Task 3 validation images (193)", approx="51MB"),
        Archive("ISIC2018_Task3_Validation_GroundTruth.zip", "2018", "Task 3 validation labels", approx="7KB"),
        Archive("ISIC2018_Task3_Test_Input.zip", "2018", "Task 3 test images (1,512)", approx="401MB"),
        Archive("ISIC2018_Task3_Test_GroundTruth.zip", "2018", "Task 3 test labels", approx="16KB"),
    ),
}


def base_url() -> str:
    return os.environ.get(URL_ENV) or BASE_URL


def archives(dataset: str) -> tuple[Archive, ...]:
    try:
        return CATALOGUE[dataset]
    except KeyError:
        raise LtbenchError(f"data download: unknown dataset {dataset!r} (choose from {', '.join(CATALOGUE)})") from None


def _human(n: int | None) -> str:
    if n is None:
        return "size not published"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} B" if unit == "B" else f"{n:,.1f} {unit} ({n:,} B)"
        n /= 1024
    return ""


def dry_run_lines(dataset: str, to: Path, base: str | None = None) -> list[str]:
    """What ``download`` would fetch: one line per file with its size and check."""
    base = base or base_url()
    lines = []
    for a in archives(dataset):
        size = _human(a.size) if a.size is not None else (f"{a.approx} (ISIC site, rounded; exact size not published)"
                                                          if a.approx else "size not published")
        check = f"md5 {a.md5}" if a.md5 else "server's declared size only (no published checksum)"
        then = f"extract into {to}" if a.is_zip else f"keep as {to / a.name}"
        lines.append(f"{a.name:45s} {size}; check: {check}; {a.what}; {a.url(base)} -> {then}")
    return lines


# ------------------------------------------------------------------------------------ transfer


class Unreachable(LtbenchError):
    """The server could not be reached or refused the file: the user downloads it by hand."""


def _manual(a: Archive, base: str, to: Path, why: str) -> LtbenchError:
    return Unreachable(f"cannot download {a.url(base)} ({why}); download it by hand and put it at "
                       f"{to / a.name}, then rerun to verify and extract it")


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _verify(a: Archive, path: Path, expected: int | None) -> None:
    """Size (catalogue, else the server's) and MD5 (when published); refuse and keep the file."""
    size = path.stat().st_size
    want = a.size if a.size is not None else expected
    keep = f"; kept for inspection at {path} (delete it to download again)"
    if want is not None and size != want:
        raise LtbenchError(f"{a.name}: {size:,} bytes, expected {want:,}{keep}")
    if a.md5 is not None and (got := _md5(path)) != a.md5:
        raise LtbenchError(f"{a.name}: md5 {got} does not match the expected {a.md5}{keep}")


def _total_from(resp: http.client.HTTPResponse, offset: int) -> int | None:
    if resp.status == 206:
        rng = resp.headers.get("Content-Range", "")  # "bytes start-end/total"
        total = rng.rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def fetch(a: Archive, to: Path, base: str, progress: bool | None = None) -> Path:
    """Download ``a`` into ``to/<name>`` (resuming ``<name>.part``), verified; returns the path."""
    final, part = to / a.name, to / (a.name + ".part")
    if final.is_file():
        _verify(a, final, None)
        return final
    offset = part.stat().st_size if part.is_file() else 0
    if a.size is not None and offset == a.size:  # complete but not yet verified
        _verify(a, part, a.size)
        part.replace(final)
        return final
    request = urllib.request.Request(a.url(base), headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        resp = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to fetch: the .part is whole (or too long)
            _verify(a, part, a.size if a.size is not None else offset)
            part.replace(final)
            return final
        raise _manual(a, base, to, f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, socket.timeout, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _manual(a, base, to, str(reason) or type(exc).__name__) from None
    with resp:
        if offset and resp.status != 206:
            offset = 0  # the server ignored the Range header: start again
        total = _total_from(resp, offset)
        if a.size is not None and total is not None and total != a.size:
            raise LtbenchError(f"{a.url(base)}: the server offers {total:,} bytes, expected {a.size:,} "
                               "(has the official file changed?)")
        expected = total if total is not None else a.size
        show = sys.stderr.isatty() if progress is None else progress
        from tqdm import tqdm

        bar = tqdm(total=expected, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=a.name,
                   disable=not show, leave=False)
        received = offset
        try:
            with open(part, "ab" if offset else "wb") as f:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (http.client.IncompleteRead, ConnectionError, socket.timeout, OSError) as exc:
                        if isinstance(exc, http.client.IncompleteRead) and exc.partial:
                            f.write(exc.partial)
                            received += len(exc.partial)
                        break
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
    if expected is not None and received < expected:
        raise LtbenchError(f"{a.name}: download interrupted at {received:,} of {expected:,} bytes "
                           f"(kept in {part}); rerun to resume")
    _verify(a, part, expected)
    part.replace(final)
    return final


# ---------------------------------------------------------------------------------- extraction


def unsafe_entry(name: str) -> str | None:
    """Why a zip entry name would land outside the target folder, or None if it is safe."""
    posix, win = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or win.is_absolute() or win.drive or name.startswith(("/", "\\")):
        return "an absolute path"
    if ".." in posix.parts or ".." in win.parts:
        return "a path that climbs out with .."
    return None


def safe_extract(archive: Path, to: Path) -> list[str]:
    """Extract every entry of ``archive`` into ``to``; refuse the whole zip if any entry escapes it."""
    to = Path(to).resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # check all before writing anything
                why = unsafe_entry(info.filename)
                target = (to / info.filename).resolve()
                if why is None and to != target and to not in target.parents:
                    why = "a path outside the target folder"
                if why:
                    raise LtbenchError(f"{archive}: entry {info.filename!r} is {why}; refusing to extract it")
            zf.extractall(to)
            return [i.filename for i in infos]
    except zipfile.BadZipFile as exc:
        raise LtbenchError(f"{archive}: not a valid zip ({exc}); kept for inspection, delete it to download again") from None


def _lift_csvs(names: list[str], to: Path) -> None:
    """The 2018 ground-truth zips hold ``<folder>/<file>.csv``; the loaders read ``to/<file>.csv``."""
    for name in names:
        p = PurePosixPath(name)
        if p.suffix.lower() == ".csv" and len(p.parts) > 1 and not (to / p.name).exists():
            shutil.copyfile(to / name, to / p.name)


def download(dataset: str, to: Path, base: str | None = None, catalogue: tuple[Archive, ...] | None = None,
             extract: bool = True, progress: bool | None = None, echo: Callable[[str], None] = print) -> list[Path]:
    """Fetch, verify and extract every file of ``dataset`` into ``to``; returns the downloaded files.

    ``catalogue`` replaces the dataset's files (tests); an extracted zip leaves a marker
    ``.<name>.extracted`` so a rerun does not extract it again.
    """
    base = base or base_url()
    files = catalogue if catalogue is not None else archives(dataset)
    to = Path(to).expanduser()
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LtbenchError(f"--to {to}: cannot create it ({exc.strerror})") from None
    done = []
    for k, a in enumerate(files):
        try:
            path = fetch(a, to, base, progress)
        except Unreachable as exc:
            missing = [b for b in files[k:] if not (to / b.name).is_file()]
            if len(missing) <= 1:
                raise
            where = a.url(base).rsplit("/", 1)[0]
            raise Unreachable(f"{str(exc).split(';')[0]}; download by hand from {where}/: "
                              f"{', '.join(b.name for b in missing)} and put them in {to}, "
                              "then rerun to verify and extract them") from None
        done.append(path)
        if extract and a.is_zip:
            marker = to / f".{a.name}.extracted"
            if not marker.exists():
                names = safe_extract(path, to)
                _lift_csvs(names, to)
                marker.write_text("\n".join(names) + "\n")
                echo(f"{a.name}: {len(names)} entries extracted into {to}")
            else:
                echo(f"{a.name}: already extracted")
        else:
            echo(f"{a.name}: {path.stat().st_size:,} bytes at {path}")
    return done
