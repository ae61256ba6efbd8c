"""``ltbench data download isic2018|isic2019 --to DIR``: the official ISIC challenge archives.

Files come from the ISIC challenge bucket (https://challenge.isic-archive.com/data/, served from
``https://isic-challenge-data.s3.amazonaws.com/<year>/<file>``; the same URLs as FLamby's
``fed_isic2019`` download script and the ISIC landing site). For tests or a mirror the base URL can
be replaced with the environment variable ``LTBENCH_DOWNLOAD_URL`` (``<base>/<year>/<file>``).

Each file is fetched into ``DIR/<file>.part`` with a progress bar (tqdm, on a terminal), resumed
with an HTTP ``Range`` request when a ``.part`` is already there, checked, then renamed to
``DIR/<file>``. Checks: the byte count the server declared (``Content-Length`` / ``Content-Range``),
the size and MD5 kept in :data:`CATALOGUE` where they are known, and the content
(``download_content.py``: a zip's central directory and expected members, a CSV's header, last line
and one row per image), since a server may omit ``Content-Length`` and close early. The MD5 of each
accepted file is kept in ``DIR/download_manifest.json``; a file already in place is checked again on
every run. A ``.part`` that is a symbolic link is refused, not followed, and a transfer that stalls
(less than :data:`STALL_BYTES` in :data:`STALL_S` seconds) stops with the ``.part`` kept to resume. **No exact size or checksum of
these files is published anywhere we could find**: the ISIC challenge site's data page gives sizes
rounded to two or three digits (``Download (9.1GB)``; ImageMarkup/stade,
``stade/core/templates/data/2018.html`` and ``2019.html``), which the catalogue keeps as ``approx``
for ``--dry-run`` only (too coarse to check a file against: "1MB" for a 1.29 MB CSV); FLamby's
``fed_isic2019`` download script (owkin/FLamby, ``flamby/datasets/fed_isic2019/dataset_creation_scripts/
download_isic.py``) checks only that the zip opens; no other public download script or dataset wrapper
we found pins a checksum. So the server's declared size and the content are checked, and the catalogue never holds
a guessed value. A file that fails a check is refused and kept for inspection (the message names it;
delete it to download again). Zips are then extracted into ``DIR`` in the official layout (the
layout ``ltbench.data.isic`` reads), refusing the whole archive if any entry is an absolute path or
climbs out of ``DIR`` (``../``) or if its entries would expand past :data:`EXTRACT_RATIO` times its
size or the free space; only the archive's own folder is extracted (a stray entry named like a
ground-truth CSV cannot replace it), and the ground-truth CSV that each 2018 zip keeps in its folder
is copied to ``DIR`` itself.

Offline (or blocked) the command fails with one line saying what to download by hand and where to
put it; a file put there by hand is verified and extracted by a rerun.
"""
from __future__ import annotations

import errno
import http.client
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable

from ltbench.data import download_content as content
from ltbench.data.isic import ISIC2018_COLUMNS, ISIC2019_COLUMNS
from ltbench.errors import LtbenchError
from ltbench.store.files import atomic_write

BASE_URL = "https://isic-challenge-data.s3.amazonaws.com"
URL_ENV = "LTBENCH_DOWNLOAD_URL"
CHUNK = 1 << 20
TIMEOUT_S = 60  # one socket operation (connect, one read)
# A transfer that brings less than STALL_BYTES in STALL_S seconds (under ~3.5 KB/s) has stalled: stop it
# (the .part is kept to resume) rather than wait forever on a server that trickles bytes.
STALL_S = 300.0
STALL_BYTES = 1 << 20
# Zip bomb guard: the entries of an archive may expand to at most this many times its size (the ISIC
# JPEG zips are ~1x, the one-hot ground-truth CSVs compress ~20x; deflate can reach ~1000x) or
# EXTRACT_FLOOR bytes, whichever is larger.
EXTRACT_RATIO = 200
EXTRACT_FLOOR = 16 << 20


@dataclass(frozen=True)
class Archive:
    """One official file: its name in the bucket's ``year`` folder and what is known about it."""

    name: str
    year: str
    what: str
    size: int | None = None  # bytes; None: not published (the server's declared size is checked)
    md5: str | None = None  # None: not published
    approx: str = ""  # the ISIC site's rounded size, shown by --dry-run when the exact one is unknown (never checked)
    columns: tuple[str, ...] = ()  # a CSV's (or a zip's ``lift`` CSV's) columns the loaders read
    rows_of: str = ""  # the image zip with one image per row of this CSV ("" = not checked)
    lift: str = ""  # a ground-truth zip's CSV member, copied to DIR (the loaders read DIR/<file>.csv)

    @property
    def folder(self) -> str:
        """A zip's own folder: the only part of it that is extracted."""
        return self.name.removesuffix(".zip")

    def url(self, base: str) -> str:
        return f"{base.rstrip('/')}/{self.year}/{self.name}"

    @property
    def is_zip(self) -> bool:
        return self.name.endswith(".zip")


# The files ltbench's loaders read (ltbench/data/isic.py). Exact sizes/MD5: none published (module doc).
# approx: the sizes the ISIC challenge site's data page shows, rounded as it rounds them — ImageMarkup/stade
# stade/core/templates/data/2019.html (commit 2045a900) and data/2018.html (commit bc36a40b).
# Content checks: the loaders' columns, and one row per image of the zip the CSV describes.
_GT19, _GT18, _LESION = ("image", *ISIC2019_COLUMNS), ("image", *ISIC2018_COLUMNS), ("image", "lesion_id")


def _gt2018(part: str, approx: str) -> Archive:
    folder = f"ISIC2018_Task3_{part}_GroundTruth"
    return Archive(f"{folder}.zip", "2018", f"Task 3 {part.lower()} labels", approx=approx, columns=_GT18,
                   rows_of=f"ISIC2018_Task3_{part}_Input.zip", lift=f"{folder}/{folder}.csv")


CATALOGUE: dict[str, tuple[Archive, ...]] = {
    "isic2019": (
        Archive("ISIC_2019_Training_Input.zip", "2019", "training images (25,331 JPEGs)", approx="9.1GB"),
        Archive("ISIC_2019_Training_GroundTruth.csv", "2019", "training labels", approx="1MB", columns=_GT19,
                rows_of="ISIC_2019_Training_Input.zip"),
        Archive("ISIC_2019_Training_Metadata.csv", "2019", "training metadata (lesion ids)", approx="1MB",
                columns=_LESION, rows_of="ISIC_2019_Training_Input.zip"),
    ),
    "isic2018": (
        Archive("ISIC2018_Task3_Training_Input.zip", "2018", "Task 3 training images (10,015 JPEGs)", approx="2.6GB"),
        _gt2018("Training", "36KB"),
        Archive("ISIC2018_Task3_Training_LesionGroupings.csv", "2018", "Task 3 training lesion ids", approx="481KB",
                columns=_LESION, rows_of="ISIC2018_Task3_Training_Input.zip"),
        Archive("ISIC2018_Task3_Validation_Input.zip", "2018", "Task 3 validation images (193)", approx="51MB"),
        _gt2018("Validation", "7KB"),
        Archive("ISIC2018_Task3_Test_Input.zip", "2018", "Task 3 test images (1,512)", approx="401MB"),
        _gt2018("Test", "16KB"),
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
        check = f"md5 {a.md5}" if a.md5 else "declared size and content (no published checksum)"
        then = f"extract into {to}" if a.is_zip else f"keep as {to / a.name}"
        lines.append(f"{a.name:45s} {size}; check: {check}; {a.what}; {a.url(base)} -> {then}")
    return lines


# ------------------------------------------------------------------------------------ transfer


class Unreachable(LtbenchError):
    """The server could not be reached or refused the file: the user downloads it by hand."""


def _manual(a: Archive, base: str, to: Path, why: str) -> LtbenchError:
    return Unreachable(f"cannot download {a.url(base)} ({why}); download it by hand and put it at "
                       f"{to / a.name}, then rerun to verify and extract it")


def _accept(a: Archive, path: Path, to: Path, expected: int | None, source: str) -> Path:
    """Check ``path`` (size, content, MD5 when published), move it to ``to/<name>``, record its MD5.

    Refused files are kept for inspection (the message names the file).
    """
    size = path.stat().st_size
    want = a.size if a.size is not None else expected
    if want is not None and size != want:
        raise LtbenchError(f"{a.name}: {size:,} bytes, expected {want:,}{content.kept(path)}")
    final = to / a.name
    try:
        content.check_content(a, path, to)
    except LtbenchError as exc:
        if want is None and path != final:  # no declared size: a cut transfer looks like this, so say so
            raise LtbenchError(f"{exc}; the server declared no size, so the transfer may have been cut: "
                               "rerun to resume it") from None
        raise
    if path == final:  # already in place: it must not have changed since it was recorded
        got = content.check_against_manifest(to, a.name, path)
    else:
        got = content.md5_of(path)
    if a.md5 is not None and got != a.md5:
        raise LtbenchError(f"{a.name}: md5 {got} does not match the expected {a.md5}{content.kept(path)}")
    if path != final:
        path.replace(final)
        content.record(to, a.name, final, got, source)
    elif a.name not in content.read_manifest(to):
        content.record(to, a.name, final, got, "found in place")
    return final


def _total_from(resp: http.client.HTTPResponse, offset: int) -> int | None:
    if resp.status == 206:
        rng = resp.headers.get("Content-Range", "")  # "bytes start-end/total"
        total = rng.rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _open_part(part: Path, append: bool):
    """``part`` for writing, never through a symbolic link (O_NOFOLLOW: a link planted there fails)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    try:
        return os.fdopen(os.open(part, flags, 0o666), "ab" if append else "wb")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LtbenchError(f"{part} is a symbolic link; refusing to follow it (delete it to download again)") \
                from None
        raise LtbenchError(f"{part}: cannot write ({exc.strerror})") from None


def fetch(a: Archive, to: Path, base: str, progress: bool | None = None, stall_s: float = STALL_S) -> Path:
    """Download ``a`` into ``to/<name>`` (resuming ``<name>.part``), checked; returns the path.

    A file already at ``to/<name>`` is checked again (content, and MD5 against the manifest).
    """
    final, part = to / a.name, to / (a.name + ".part")
    if part.is_symlink():
        raise LtbenchError(f"{part} is a symbolic link; refusing to follow it (delete it to download again)")
    if final.is_file():
        return _accept(a, final, to, None, "found in place")
    offset = part.stat().st_size if part.is_file() else 0
    if a.size is not None and offset == a.size:  # complete but not yet verified
        return _accept(a, part, to, a.size, "downloaded")
    timeout = min(TIMEOUT_S, stall_s)
    request = urllib.request.Request(a.url(base), headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to fetch: the .part is whole (or too long)
            return _accept(a, part, to, a.size if a.size is not None else offset, "downloaded")
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
        received, why = offset, ""
        mark_t, mark_n = time.monotonic(), received  # the stall clock: restarts at each STALL_BYTES received
        try:
            with _open_part(part, append=bool(offset)) as f:
                while True:
                    try:
                        block = resp.read1(CHUNK)  # returns what has arrived: the stall clock is read often
                    except socket.timeout:
                        why = f"stalled: nothing received for {timeout:g} s"
                        break
                    except (http.client.HTTPException, ConnectionError, OSError) as exc:
                        why = f"connection lost: {exc or type(exc).__name__}"
                        break
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    bar.update(len(block))
                    now = time.monotonic()
                    if received - mark_n >= STALL_BYTES:
                        mark_t, mark_n = now, received
                    elif now - mark_t > stall_s:
                        why = f"stalled: {received - mark_n:,} bytes in the last {now - mark_t:.0f} s"
                        break
        except OSError as exc:  # writing the .part (reads are handled above): a full disk names the file
            raise LtbenchError(f"{part}: cannot write ({exc.strerror}) after {received:,} bytes; "
                               "free space and rerun to resume") from None
        finally:
            bar.close()
    if why or (expected is not None and received < expected):
        of = f"of {expected:,} bytes" if expected is not None else "bytes (size not declared)"
        raise LtbenchError(f"{a.name}: download interrupted at {received:,} {of} "
                           f"({why or 'the server closed the connection'}; kept in {part}); rerun to resume")
    return _accept(a, part, to, expected, "downloaded")


# ---------------------------------------------------------------------------------- extraction


def unsafe_entry(name: str) -> str | None:
    """Why a zip entry name would land outside the target folder, or None if it is safe."""
    posix, win = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or win.is_absolute() or win.drive or name.startswith(("/", "\\")):
        return "an absolute path"
    if ".." in posix.parts or ".." in win.parts:
        return "a path that climbs out with .."
    return None


def safe_extract(archive: Path, to: Path, folder: str | None = None) -> tuple[list[str], list[str]]:
    """Extract ``archive`` into ``to``; returns the names extracted and those skipped.

    The whole zip is refused if any entry escapes ``to`` or the entries would expand past
    :data:`EXTRACT_RATIO` times the archive (or the free space). With ``folder``, only entries
    inside ``folder/`` are extracted: anything else (e.g. a stray ``<ground truth>.csv`` at the top)
    is skipped, so it cannot take the place of a file ltbench reads. A write error (a full disk)
    names the file being written.
    """
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
            inside = [i for i in infos if folder is None or i.filename.startswith(folder.rstrip("/") + "/")]
            declared, size = sum(i.file_size for i in inside), archive.stat().st_size
            if declared > max(EXTRACT_FLOOR, EXTRACT_RATIO * size):
                raise LtbenchError(f"{archive}: its entries would expand to {declared:,} bytes, over {EXTRACT_RATIO}x "
                                   f"the archive's {size:,} bytes (a zip bomb?); refusing to extract it")
            free = shutil.disk_usage(to).free
            if declared > free:
                raise LtbenchError(f"{to}: extracting {archive.name} needs {declared:,} bytes, {free:,} are free; "
                                   "free space and rerun")
            for info in inside:  # the size a zip declares bounds what zipfile writes (a CRC error past it)
                try:
                    zf.extract(info, to)
                except OSError as exc:
                    raise LtbenchError(f"{to / info.filename}: cannot extract it from {archive.name} "
                                       f"({exc.strerror}); free space and rerun") from None
            kept_ids = {id(i) for i in inside}
            return [i.filename for i in inside], [i.filename for i in infos if id(i) not in kept_ids]
    except zipfile.BadZipFile as exc:
        raise LtbenchError(f"{archive}: not a valid zip ({exc}); kept for inspection, delete it to download again") from None


def _lift_csv(a: Archive, to: Path) -> None:
    """The 2018 ground-truth zips hold ``<folder>/<file>.csv``; the loaders read ``to/<file>.csv``.

    Only the archive's own CSV (checked in :func:`content.check_content`) is copied, replacing any
    file of that name.
    """
    if a.lift:
        atomic_write(to / PurePosixPath(a.lift).name, (to / a.lift).read_bytes())


def download(dataset: str, to: Path, base: str | None = None, catalogue: tuple[Archive, ...] | None = None,
             extract: bool = True, progress: bool | None = None, echo: Callable[[str], None] = print,
             stall_s: float = STALL_S) -> list[Path]:
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
            path = fetch(a, to, base, progress, stall_s=stall_s)
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
                names, skipped = safe_extract(path, to, a.folder)
                _lift_csv(a, to)
                atomic_write(marker, "\n".join(names) + "\n")
                extra = f" (skipped {len(skipped)} outside {a.folder}/: {', '.join(skipped[:3])})" if skipped else ""
                echo(f"{a.name}: {len(names)} entries extracted into {to}{extra}")
            else:
                echo(f"{a.name}: already extracted")
        else:
            echo(f"{a.name}: {path.stat().st_size:,} bytes at {path}")
    return done
