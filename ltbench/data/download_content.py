"""What a downloaded ISIC file must hold, and the manifest of what was fetched (issue 21).

No size or checksum of the ISIC challenge files is published (see ``download.py``), and a server may
send a file without ``Content-Length`` and close early, so a file is judged by its content:

* a zip by its central directory — it sits at the end of the file, so a cut zip has lost it and
  does not open — and by its expected members: the folder of JPEGs the loaders read
  (``<zip name>/``), or a ground-truth zip's CSV (``<folder>/<folder>.csv``), itself checked as below;
* a CSV by its header (the columns the loaders read), its end (every official ISIC CSV ends with a
  line break, so a file cut inside a row does not), a full row on every line, and its row count,
  which must equal the number of images in the archive it describes (one row per image).

The size and MD5 of each accepted file go to ``DIR/download_manifest.json``; a rerun recomputes the
MD5 of a file already in place and refuses one that changed since.
"""
from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import zipfile
from pathlib import Path, PurePosixPath

from ltbench.errors import LtbenchError
from ltbench.store.files import atomic_write

MANIFEST = "download_manifest.json"
_BLOCK = 1 << 20


def kept(path: Path) -> str:
    """The tail of every refusal: the file stays for inspection."""
    return f"; kept for inspection at {path} (delete it to download again)"


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- zips


def zip_entries(name: str, path: Path) -> list[zipfile.ZipInfo]:
    """The zip's central directory; refused when it cannot be read (a cut or empty file)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        size = path.stat().st_size
        raise LtbenchError(f"{name}: not a complete zip ({size:,} bytes; its central directory cannot be read: "
                           f"{exc}){kept(path)}") from None


def jpegs_in(folder: str, infos: list[zipfile.ZipInfo]) -> int:
    """JPEG entries directly inside ``folder/`` (the images the loaders read)."""
    return sum(1 for i in infos if not i.is_dir() and PurePosixPath(i.filename).parent == PurePosixPath(folder)
               and i.filename.lower().endswith(".jpg"))


def image_count(to: Path, zip_name: str) -> int | None:
    """Images in the archive ``zip_name``: from its central directory, else its extracted folder."""
    folder = zip_name.removesuffix(".zip")
    path = to / zip_name
    if path.is_file():
        try:
            with zipfile.ZipFile(path) as zf:
                return jpegs_in(folder, zf.infolist())
        except (zipfile.BadZipFile, OSError):
            return None
    if (to / folder).is_dir():
        return sum(1 for p in (to / folder).iterdir() if p.suffix.lower() == ".jpg")
    return None


# ------------------------------------------------------------------------------------------- CSVs


def check_csv(what: str, data: bytes, columns: tuple[str, ...], n_images: int | None, images_in: str,
              where: Path) -> int:
    """Header, complete last line, full rows, and one row per image; returns the row count."""
    if not data:
        raise LtbenchError(f"{what}: empty (0 bytes){kept(where)}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LtbenchError(f"{what}: not UTF-8 text ({exc.reason} at byte {exc.start}){kept(where)}") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    header = [c.strip() for c in rows[0]] if rows else []
    missing = [c for c in columns if c not in header]
    if missing:
        raise LtbenchError(f"{what}: header {','.join(header)[:120]!r} lacks column(s) {', '.join(missing)}"
                           f"{kept(where)}")
    if not text.endswith("\n"):
        raise LtbenchError(f"{what}: the last line has no line break, so the file was cut{kept(where)}")
    short = next((k for k, r in enumerate(rows[1:]) if len(r) != len(header)), None)
    if short is not None:
        raise LtbenchError(f"{what}: row {short + 1} has {len(rows[short + 1])} fields, the header "
                           f"{len(header)}{kept(where)}")
    n = len(rows) - 1
    if n_images is not None and n != n_images:
        raise LtbenchError(f"{what}: {n:,} rows but {images_in} holds {n_images:,} images{kept(where)}")
    return n


# ----------------------------------------------------------------------------------------- manifest


def read_manifest(to: Path) -> dict:
    path = to / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LtbenchError(f"{path}: unreadable ({exc}); delete it and rerun to recheck every file") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise LtbenchError(f"{path}: not a mapping of file -> record; delete it and rerun to recheck every file")
    return data


def record(to: Path, name: str, path: Path, md5: str, source: str) -> None:
    """Add ``name`` (size, MD5, where it came from, when) to the manifest beside it."""
    data = read_manifest(to)
    data[name] = {"bytes": path.stat().st_size, "md5": md5, "source": source,
                  "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write(to / MANIFEST, json.dumps(data, indent=1, sort_keys=True) + "\n")


def check_against_manifest(to: Path, name: str, path: Path) -> str:
    """MD5 of a file already in place, refused when it differs from the one recorded; returns it."""
    got = md5_of(path)
    rec = read_manifest(to).get(name)
    if rec is not None and rec.get("md5") != got:
        raise LtbenchError(f"{name}: changed since it was fetched (md5 {got}, {path.stat().st_size:,} bytes; "
                           f"{to / MANIFEST} recorded {rec.get('md5')}, {rec.get('bytes')} bytes){kept(path)}")
    return got


def check_content(a, path: Path, to: Path) -> None:
    """The content checks above for one catalogue file ``a`` (an ``Archive``) at ``path``."""
    n_images = image_count(to, a.rows_of) if a.rows_of else None
    if not a.is_zip:
        check_csv(a.name, path.read_bytes(), a.columns, n_images, a.rows_of, path)
        return
    infos = zip_entries(a.name, path)
    if not a.lift:
        if not jpegs_in(a.folder, infos):
            raise LtbenchError(f"{a.name}: no JPEG in {a.folder}/ ({len(infos)} entries){kept(path)}")
        return
    if not any(i.filename == a.lift for i in infos):
        raise LtbenchError(f"{a.name}: no {a.lift} inside ({len(infos)} entries){kept(path)}")
    try:
        with zipfile.ZipFile(path) as zf:
            data = zf.read(a.lift)
    except (zipfile.BadZipFile, OSError) as exc:
        raise LtbenchError(f"{a.name}: cannot read {a.lift} ({exc}){kept(path)}") from None
    check_csv(f"{a.name}: {a.lift}", data, a.columns, n_images, a.rows_of, path)
