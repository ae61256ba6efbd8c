"""`ltbench data download` against an HTTP server on 127.0.0.1 (Range support, a connection cut mid-file)."""
from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltbench.cli import main
from ltbench.data.download import CATALOGUE, URL_ENV, Archive, download, unsafe_entry
from ltbench.data.isic import load_isic2019
from ltbench.errors import LtbenchError

IDS = [f"ISIC_{i:07d}" for i in range(8)]


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # stored: big enough to cut mid-file
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def official_2019() -> dict[str, bytes]:
    """The three ISIC 2019 files, small, in the official layout."""
    images = {f"ISIC_2019_Training_Input/{i}.jpg": _jpeg(k) for k, i in enumerate(IDS)}
    images["ISIC_2019_Training_Input/LICENSE.txt"] = b"CC-BY-NC\n"
    cols = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    rows = ["image," + ",".join(cols)]
    for k, i in enumerate(IDS):
        rows.append(i + "," + ",".join("1.0" if c == k % 8 else "0.0" for c in range(9)))
    meta = ["image,age_approx,anatom_site_general,lesion_id,sex"] + [f"{i},50,head,HAM_{k // 2:07d},male"
                                                                   for k, i in enumerate(IDS)]
    return {"2019/ISIC_2019_Training_Input.zip": _zip(images),
            "2019/ISIC_2019_Training_GroundTruth.csv": ("\r\n".join(rows) + "\r\n").encode(),
            "2019/ISIC_2019_Training_Metadata.csv": ("\r\n".join(meta) + "\r\n").encode()}


class Server:
    """Serves ``files`` (path -> bytes) with Range support; ``cut[path] = n`` sends n bytes then closes."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.cut, self.ranges = dict(files), {}, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                data = outer.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                outer.ranges.append((path, rng))
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                n = outer.cut.pop(path, None)
                self.wfile.write(body if n is None else body[:n])
                self.wfile.flush()
                if n is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _quiet(_: str) -> None:
    pass


def test_complete_download_gives_the_official_layout(tmp_path: Path) -> None:
    with Server(official_2019()) as srv:
        download("isic2019", tmp_path, base=srv.url, progress=False, echo=_quiet)
    s = load_isic2019(tmp_path)  # the loader reads what was extracted
    assert s.ids == IDS and s.labels.tolist() == list(range(8)) and s.groups[0] == "HAM_0000000"
    assert not list(tmp_path.glob("*.part"))


def test_interrupted_then_resumed(tmp_path: Path) -> None:
    files = official_2019()
    zname = "2019/ISIC_2019_Training_Input.zip"
    size = len(files[zname])
    catalogue = tuple(replace(a, md5=hashlib.md5(files[f"2019/{a.name}"]).hexdigest(), size=len(files[f"2019/{a.name}"]))
                      for a in CATALOGUE["isic2019"])
    with Server(files) as srv:
        srv.cut[zname] = size // 3
        with pytest.raises(LtbenchError, match=rf"interrupted at {size // 3:,} of {size:,} bytes.*rerun to resume"):
            download("isic2019", tmp_path, base=srv.url, catalogue=catalogue, progress=False, echo=_quiet)
        assert (tmp_path / "ISIC_2019_Training_Input.zip.part").stat().st_size == size // 3
        download("isic2019", tmp_path, base=srv.url, catalogue=catalogue, progress=False, echo=_quiet)
        assert (zname, f"bytes={size // 3}-") in srv.ranges  # resumed, not restarted
    assert (tmp_path / "ISIC_2019_Training_Input.zip").read_bytes() == files[zname]
    assert len(load_isic2019(tmp_path)) == 8


def test_wrong_checksum_is_refused_and_kept(tmp_path: Path) -> None:
    files = official_2019()
    bad = tuple(replace(a, md5="0" * 32) if a.name.endswith(".zip") else a for a in CATALOGUE["isic2019"])
    with Server(files) as srv:
        for _ in range(2):  # a rerun refuses the kept file again instead of trusting it
            with pytest.raises(LtbenchError, match=r"ISIC_2019_Training_Input.zip: md5 [0-9a-f]{32} does not match "
                                                   r"the expected 0{32}; kept for inspection at .*\.part"):
                download("isic2019", tmp_path, base=srv.url, catalogue=bad, progress=False, echo=_quiet)
    kept = tmp_path / "ISIC_2019_Training_Input.zip.part"
    assert kept.read_bytes() == files["2019/ISIC_2019_Training_Input.zip"]
    assert not (tmp_path / "ISIC_2019_Training_Input").exists()


def test_wrong_size_is_refused(tmp_path: Path) -> None:
    files = official_2019()
    bad = (replace(CATALOGUE["isic2019"][1], size=5),)
    with Server(files) as srv:
        with pytest.raises(LtbenchError, match="the server offers .* bytes, expected 5"):
            download("isic2019", tmp_path, base=srv.url, catalogue=bad, progress=False, echo=_quiet)


@pytest.mark.parametrize("evil", ["../evil.txt", "ISIC_2019_Training_Input/../../evil.txt", "/tmp/ltbench_evil.txt"])
def test_escaping_entries_are_refused(tmp_path: Path, evil: str) -> None:
    files = {"2019/ISIC_2019_Training_Input.zip": _zip({"ISIC_2019_Training_Input/a.jpg": _jpeg(0), evil: b"x"})}
    to = tmp_path / "data"
    with Server(files) as srv:
        with pytest.raises(LtbenchError, match=rf"entry '{evil}' is (an absolute path|a path that climbs out)"):
            download("isic2019", to, base=srv.url, catalogue=CATALOGUE["isic2019"][:1], progress=False, echo=_quiet)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/ltbench_evil.txt").exists()
    assert not (to / "ISIC_2019_Training_Input").exists()  # nothing extracted at all


def test_unsafe_entry_names() -> None:
    assert unsafe_entry("ISIC_2019_Training_Input/ISIC_0000000.jpg") is None
    assert unsafe_entry("C:\\Windows\\x") == "an absolute path"
    assert unsafe_entry("a\\..\\..\\b") == "a path that climbs out with .."


def test_cli_dry_run_offline_error_and_env_url(tmp_path: Path, capsys, monkeypatch) -> None:
    assert main(["data", "download", "isic2018", "--to", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 7 and out[0].startswith("ISIC2018_Task3_Training_Input.zip")
    assert "https://isic-challenge-data.s3.amazonaws.com/2018/ISIC2018_Task3_Test_GroundTruth.zip" in out[-1]
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9")  # nothing listens on the discard port
    assert main(["data", "download", "isic2019", "--to", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "download by hand" in err and "ISIC_2019_Training_Metadata.csv" in err
    assert str(tmp_path) in err
    with Server(official_2019()) as srv:
        monkeypatch.setenv(URL_ENV, srv.url)
        assert main(["data", "download", "isic2019", "--to", str(tmp_path)]) == 0
    assert len(load_isic2019(tmp_path)) == 8


def test_archive_url() -> None:
    a = Archive("ISIC_2019_Training_Input.zip", "2019", "images")
    assert a.url("https://isic-challenge-data.s3.amazonaws.com/") == \
        "https://isic-challenge-data.s3.amazonaws.com/2019/ISIC_2019_Training_Input.zip"


def test_isic2018_ground_truth_zips_are_lifted_into_the_layout(tmp_path: Path) -> None:
    from ltbench.data.isic import load_isic2018

    cols = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]

    def gt(part: str, ids: list[str]) -> bytes:
        rows = ["image," + ",".join(cols)] + [i + "," + ",".join("1.0" if c == k % 7 else "0.0" for c in range(7))
                                             for k, i in enumerate(ids)]
        folder = f"ISIC2018_Task3_{part}_GroundTruth"
        return _zip({f"{folder}/{folder}.csv": ("\n".join(rows) + "\n").encode(), f"{folder}/LICENSE.txt": b"x"})

    parts = {"Training": IDS[:7], "Validation": [f"ISIC_1{i:06d}" for i in range(7)],
             "Test": [f"ISIC_2{i:06d}" for i in range(7)]}
    files = {}
    for part, ids in parts.items():
        files[f"2018/ISIC2018_Task3_{part}_Input.zip"] = _zip(
            {f"ISIC2018_Task3_{part}_Input/{i}.jpg": _jpeg(k) for k, i in enumerate(ids)})
        files[f"2018/ISIC2018_Task3_{part}_GroundTruth.zip"] = gt(part, ids)
    files["2018/ISIC2018_Task3_Training_LesionGroupings.csv"] = (
        "image,lesion_id,diagnosis_confirm_type\n" + "".join(f"{i},HAM_{k},histo\n" for k, i in enumerate(IDS[:7]))).encode()
    with Server(files) as srv:
        download("isic2018", tmp_path, base=srv.url, progress=False, echo=_quiet)
    s = load_isic2018(tmp_path)
    assert len(s) == 21 and sorted(set(s.official_split)) == ["test", "train", "val"]


@pytest.mark.parametrize("wrong", ["size", "md5"])
def test_a_file_put_there_by_hand_is_checked_refused_and_kept(tmp_path: Path, wrong: str) -> None:
    """The catalogue's size/MD5 also check a file the user put in place (no server is contacted)."""
    data = official_2019()["2019/ISIC_2019_Training_Input.zip"]
    good = replace(CATALOGUE["isic2019"][0], size=len(data), md5=hashlib.md5(data).hexdigest())
    bad = replace(good, size=len(data) + 1) if wrong == "size" else replace(good, md5="f" * 32)
    placed = tmp_path / good.name
    placed.write_bytes(data)
    nowhere = "http://127.0.0.1:9"  # the discard port: any request would fail
    expected = (rf"{len(data):,} bytes, expected {len(data) + 1:,}" if wrong == "size"
                else rf"md5 {hashlib.md5(data).hexdigest()} does not match the expected f{{32}}")
    with pytest.raises(LtbenchError, match=rf"{good.name}: {expected}; kept for inspection at {placed}"):
        download("isic2019", tmp_path, base=nowhere, catalogue=(bad,), progress=False, echo=_quiet)
    assert placed.read_bytes() == data and not (tmp_path / "ISIC_2019_Training_Input").exists()
    download("isic2019", tmp_path, base=nowhere, catalogue=(good,), progress=False, echo=_quiet)
    assert len(list((tmp_path / "ISIC_2019_Training_Input").glob("*.jpg"))) == len(IDS)

