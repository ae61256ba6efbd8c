"""`ltbench data download` against an HTTP server on 127.0.0.1 (Range support, a connection cut mid-file)."""
from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import threading
import time
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
    """Serves ``files`` (path -> bytes) with Range support; ``cut[path] = n`` sends n bytes then closes.

    Hostile modes: paths in ``no_length`` are sent without ``Content-Length`` (the end is the close);
    ``trickle[path] = s`` sends one byte every s seconds (at most 2,000); paths in ``silent`` get their
    headers and then nothing for ``silent_s`` seconds.
    """

    def __init__(self, files: dict[str, bytes]):
        self.files, self.cut, self.ranges = dict(files), {}, []
        self.no_length, self.trickle, self.silent, self.silent_s = set(), {}, set(), 5.0
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
                if path not in outer.no_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                n = outer.cut.pop(path, None)
                try:
                    if path in outer.silent:
                        time.sleep(outer.silent_s)
                    elif path in outer.trickle:
                        for k in range(min(len(body), 2000)):
                            self.wfile.write(body[k:k + 1])
                            self.wfile.flush()
                            time.sleep(outer.trickle[path])
                    else:
                        self.wfile.write(body if n is None else body[:n])
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: that is the point
                    pass
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


def official_2018(training_extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The seven ISIC 2018 Task 3 files, small (7 images per part), in the official layout."""
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
        entries = {f"ISIC2018_Task3_{part}_Input/{i}.jpg": _jpeg(k) for k, i in enumerate(ids)}
        if part == "Training":
            entries.update(training_extra or {})
        files[f"2018/ISIC2018_Task3_{part}_Input.zip"] = _zip(entries)
        files[f"2018/ISIC2018_Task3_{part}_GroundTruth.zip"] = gt(part, ids)
    files["2018/ISIC2018_Task3_Training_LesionGroupings.csv"] = (
        "image,lesion_id,diagnosis_confirm_type\n" + "".join(f"{i},HAM_{k},histo\n" for k, i in enumerate(IDS[:7]))).encode()
    return files


def test_isic2018_ground_truth_zips_are_lifted_into_the_layout(tmp_path: Path) -> None:
    from ltbench.data.isic import load_isic2018

    with Server(official_2018()) as srv:
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



# ------------------------------------------------------------------------ issue 21: hostile servers and files

def _catalogue_2019() -> tuple[Archive, ...]:
    return CATALOGUE["isic2019"]


def test_real_csvs_pass_the_content_checks_and_cut_ones_without_content_length_are_refused(
        shared_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """The shared ISIC 2019 CSVs (real files) against a zip of their 25,331 image names, served without
    Content-Length: whole they are accepted and their MD5 recorded; cut by a close (0 bytes, at a line
    break, inside a row), each is refused with rc 2 and one line, and never takes the final name."""
    gt = (shared_data / "isic" / "ISIC_2019_Training_GroundTruth.csv").read_bytes()
    meta = (shared_data / "isic" / "ISIC_2019_Training_Metadata.csv").read_bytes()
    ids = [line.split(b",")[0].decode() for line in gt.splitlines()[1:]]
    assert len(ids) == 25331
    images = _zip({f"ISIC_2019_Training_Input/{i}.jpg": b"" for i in ids})
    files = {"2019/ISIC_2019_Training_Input.zip": images, "2019/ISIC_2019_Training_GroundTruth.csv": gt,
             "2019/ISIC_2019_Training_Metadata.csv": meta}
    with Server(files) as srv:
        srv.no_length.update(files)
        whole = tmp_path / "whole"
        download("isic2019", whole, base=srv.url, extract=False, progress=False, echo=_quiet)
        manifest = json.loads((whole / "download_manifest.json").read_text())
        assert {k: v["md5"] for k, v in manifest.items()} == {
            p.split("/")[1]: hashlib.md5(d).hexdigest() for p, d in files.items()}
        assert {v["source"] for v in manifest.values()} == {"downloaded"}
        monkeypatch.setenv(URL_ENV, srv.url)
        lines = gt.split(b"\n")
        cuts = {0: "ISIC_2019_Training_GroundTruth.csv: empty \\(0 bytes\\)",
                len(b"\n".join(lines[:10001])) + 1: "10,000 rows but ISIC_2019_Training_Input.zip holds 25,331 images",
                len(gt) - 7: "the last line has no line break, so the file was cut"}
        for n, why in cuts.items():
            to = tmp_path / f"cut{n}"
            srv.cut["2019/ISIC_2019_Training_GroundTruth.csv"] = n
            assert main(["data", "download", "isic2019", "--to", str(to), "--no-extract"]) == 2
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and re.search(why, err), err
            assert "declared no size, so the transfer may have been cut: rerun to resume it" in err
            assert not (to / "ISIC_2019_Training_GroundTruth.csv").exists()
            assert (to / "ISIC_2019_Training_GroundTruth.csv.part").stat().st_size == n
        srv.cut["2019/ISIC_2019_Training_Input.zip"] = len(images) - 100  # a cut zip has lost its central directory
        to = tmp_path / "cutzip"
        assert main(["data", "download", "isic2019", "--to", str(to), "--no-extract"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "ISIC_2019_Training_Input.zip: not a complete zip" in err
        assert not (to / "ISIC_2019_Training_Input.zip").exists()


def test_a_file_already_in_place_is_checked_again(tmp_path: Path) -> None:
    files = official_2019()
    gt = files["2019/ISIC_2019_Training_GroundTruth.csv"]
    placed = tmp_path / "ISIC_2019_Training_GroundTruth.csv"
    with Server(files) as srv:
        def run():
            download("isic2019", tmp_path, base=srv.url, progress=False, echo=_quiet)

        placed.write_bytes(b"")  # put there by hand (or left by an older version): empty
        with pytest.raises(LtbenchError, match=rf"GroundTruth.csv: empty \(0 bytes\); kept for inspection at {placed}"):
            run()
        placed.write_bytes(b"\r\n".join(gt.split(b"\r\n")[:5]) + b"\r\n")  # cut at a line break: 4 rows
        with pytest.raises(LtbenchError, match="4 rows but ISIC_2019_Training_Input.zip holds 8 images"):
            run()
        placed.unlink()
        run()  # downloaded and recorded
        assert json.loads((tmp_path / "download_manifest.json").read_text())[placed.name]["md5"] == \
            hashlib.md5(gt).hexdigest()
        run()  # unchanged: accepted again
        placed.write_bytes(gt.replace(b"1.0", b"0.0", 1))  # same shape, different content
        with pytest.raises(LtbenchError, match=r"GroundTruth.csv: changed since it was fetched \(md5 [0-9a-f]{32}.*"
                                               rf"recorded {hashlib.md5(gt).hexdigest()}"):
            run()
        placed.write_bytes(gt)
        run()
    (tmp_path / "download_manifest.json").unlink()  # placed by hand: checked, then recorded as such
    download("isic2019", tmp_path, base="http://127.0.0.1:9", progress=False, echo=_quiet)
    assert {v["source"] for v in json.loads((tmp_path / "download_manifest.json").read_text()).values()} == \
        {"found in place"}


def test_a_stray_member_named_like_a_ground_truth_csv_does_not_take_its_place(tmp_path: Path) -> None:
    """2019: a top-level CSV in the image zip (extracted before the real CSV is fetched); 2018: one inside
    the image folder (the lifting of ground-truth CSVs used to copy any CSV it found)."""
    from ltbench.data.isic import load_isic2018

    fake = b"image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\r\n" + b"".join(
        f"{i},1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\r\n".encode() for i in IDS)
    files = official_2019()
    entries = {f"ISIC_2019_Training_Input/{i}.jpg": _jpeg(k) for k, i in enumerate(IDS)}
    files["2019/ISIC_2019_Training_Input.zip"] = _zip({**entries, "ISIC_2019_Training_GroundTruth.csv": fake})
    said = []
    with Server(files) as srv:
        download("isic2019", tmp_path / "2019", base=srv.url, progress=False, echo=said.append)
    assert (tmp_path / "2019" / "ISIC_2019_Training_GroundTruth.csv").read_bytes() == \
        files["2019/ISIC_2019_Training_GroundTruth.csv"]
    assert load_isic2019(tmp_path / "2019").labels.tolist() == list(range(8))
    assert "skipped 1 outside ISIC_2019_Training_Input/: ISIC_2019_Training_GroundTruth.csv" in said[0]

    fake18 = b"image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n" + b"".join(f"{i},1.0,0,0,0,0,0,0\n".encode() for i in IDS[:7])
    stray = {"ISIC2018_Task3_Training_Input/ISIC2018_Task3_Training_GroundTruth.csv": fake18}
    with Server(official_2018(stray)) as srv:
        download("isic2018", tmp_path / "2018", base=srv.url, progress=False, echo=_quiet)
    s = load_isic2018(tmp_path / "2018")
    assert s.labels[:7].tolist() == list(range(7))  # the official CSV, not the stray one (all MEL)


@pytest.mark.parametrize("dangling", [False, True])
def test_a_part_that_is_a_symlink_is_not_followed(tmp_path: Path, dangling: bool) -> None:
    victim = tmp_path / "victim.txt"
    if not dangling:
        victim.write_bytes(b"precious\n")
    to = tmp_path / "data"
    to.mkdir()
    (to / "ISIC_2019_Training_Input.zip.part").symlink_to(victim)
    with Server(official_2019()) as srv:
        with pytest.raises(LtbenchError, match=r"ISIC_2019_Training_Input.zip.part is a symbolic link; "
                                               r"refusing to follow it \(delete it to download again\)"):
            download("isic2019", to, base=srv.url, progress=False, echo=_quiet)
        assert srv.ranges == []  # refused before any request
    assert (not victim.exists()) if dangling else victim.read_bytes() == b"precious\n"


def test_a_stalled_transfer_stops_and_resumes(tmp_path: Path) -> None:
    """A server that trickles bytes (one per 20 ms) and one that goes silent after its headers: each
    stops within a bounded time with the .part kept; a rerun resumes it from there."""
    files = official_2019()
    zname = "2019/ISIC_2019_Training_Input.zip"
    part = tmp_path / "ISIC_2019_Training_Input.zip.part"
    with Server(files) as srv:
        srv.trickle[zname] = 0.02
        t0 = time.monotonic()
        with pytest.raises(LtbenchError, match=r"download interrupted at \d+ of [\d,]+ bytes \(stalled: \d+ bytes "
                                               r"in the last 1 s; kept in .*\.part\); rerun to resume"):
            download("isic2019", tmp_path, base=srv.url, progress=False, echo=_quiet, stall_s=1.0)
        assert time.monotonic() - t0 < 10
        got = part.stat().st_size
        assert 0 < got < 200
        del srv.trickle[zname]
        srv.silent.add(zname)
        srv.silent_s = 3.0
        t0 = time.monotonic()
        with pytest.raises(LtbenchError, match=r"\(stalled: nothing received for 1 s; kept in"):
            download("isic2019", tmp_path, base=srv.url, progress=False, echo=_quiet, stall_s=1.0)
        assert time.monotonic() - t0 < 10
        srv.silent.clear()
        download("isic2019", tmp_path, base=srv.url, progress=False, echo=_quiet, stall_s=1.0)
        assert (zname, f"bytes={got}-") in srv.ranges
    assert len(load_isic2019(tmp_path)) == 8


@pytest.mark.parametrize("case", ["gt zip without its csv", "image zip without jpegs", "csv header", "ragged row"])
def test_content_checks_name_the_problem(tmp_path: Path, case: str) -> None:
    if case.startswith("gt zip"):
        files = official_2018()
        files["2018/ISIC2018_Task3_Training_GroundTruth.zip"] = _zip({"ISIC2018_Task3_Training_GroundTruth/x.txt": b"x"})
        dataset, why = "isic2018", ("ISIC2018_Task3_Training_GroundTruth.zip: no ISIC2018_Task3_Training_GroundTruth/"
                                    "ISIC2018_Task3_Training_GroundTruth.csv inside")
    elif case.startswith("image zip"):
        files = official_2019()
        files["2019/ISIC_2019_Training_Input.zip"] = _zip({"ISIC_2019_Training_Input/LICENSE.txt": b"x"})
        dataset, why = "isic2019", "ISIC_2019_Training_Input.zip: no JPEG in ISIC_2019_Training_Input/"
    else:
        files = official_2019()
        name = "2019/ISIC_2019_Training_Metadata.csv"
        if case == "csv header":
            files[name] = files[name].replace(b"lesion_id", b"lesion")
            why = "ISIC_2019_Training_Metadata.csv: header 'image,age_approx,anatom_site_general,lesion,sex' lacks " \
                  "column\\(s\\) lesion_id"
        else:
            files[name] = files[name].replace(b",male\r\n", b"\r\n", 1)
            why = "ISIC_2019_Training_Metadata.csv: row 1 has 4 fields, the header 5"
        dataset = "isic2019"
    with Server(files) as srv:
        with pytest.raises(LtbenchError, match=why + ".*; kept for inspection at "):
            download(dataset, tmp_path, base=srv.url, progress=False, echo=_quiet)


def test_a_zip_bomb_is_refused_before_writing(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ISIC_2019_Training_Input/ISIC_0000000.jpg", _jpeg(0))
        zf.writestr("ISIC_2019_Training_Input/ISIC_0000001.jpg", bytes(40 << 20))  # 40 MiB of zeros: ~40 KB
    files = {"2019/ISIC_2019_Training_Input.zip": buf.getvalue()}
    with Server(files) as srv:
        with pytest.raises(LtbenchError, match=r"entries would expand to 41,9\d\d,\d\d\d bytes, over 200x the archive's "
                                               r"[\d,]+ bytes \(a zip bomb\?\); refusing to extract it"):
            download("isic2019", tmp_path, base=srv.url, catalogue=_catalogue_2019()[:1], progress=False, echo=_quiet)
    assert not (tmp_path / "ISIC_2019_Training_Input").exists()


@pytest.mark.parametrize("full", ["part", "bytes", "inodes"])
def test_a_full_disk_names_the_path(tmp_path: Path, full: str) -> None:
    """A real small tmpfs: too small for the download (.part), for the extraction (checked before writing),
    or out of inodes mid-extraction (the file being written is named); rerun after freeing space works."""
    from tests.tmpfs import tmpfs

    entries = {f"ISIC_2019_Training_Input/ISIC_{i:07d}.jpg": np.random.default_rng(i).bytes(40_000) for i in range(8)}
    data = _zip(entries)  # ~320 KB, stored
    options = {"part": "size=128k", "bytes": "size=512k", "inodes": "size=4m,nr_inodes=7"}[full]
    why = {"part": r"ISIC_2019_Training_Input.zip.part: cannot write \(No space left on device\) after [\d,]+ bytes; "
                   r"free space and rerun to resume",
           "bytes": r"extracting ISIC_2019_Training_Input.zip needs 320,000 bytes, [\d,]+ are free; free space and rerun",
           "inodes": r"ISIC_2019_Training_Input/ISIC_\d{7}.jpg: cannot extract it from ISIC_2019_Training_Input.zip "
                     r"\(No space left on device\); free space and rerun"}[full]
    with Server({"2019/ISIC_2019_Training_Input.zip": data}) as srv, tmpfs(options) as disk:
        with pytest.raises(LtbenchError, match=why) as err:
            download("isic2019", disk, base=srv.url, catalogue=_catalogue_2019()[:1], progress=False, echo=_quiet)
        assert str(disk) in str(err.value)
        subprocess.run(["mount", "-o", "remount,size=8m,nr_inodes=1000", str(disk)], check=True)
        download("isic2019", disk, base=srv.url, catalogue=_catalogue_2019()[:1], progress=False, echo=_quiet)
        assert len(list((disk / "ISIC_2019_Training_Input").glob("*.jpg"))) == 8
