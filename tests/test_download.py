"""Download of real PCAM, against a real HTTP server on 127.0.0.1 serving small gzipped PCAM-format files."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from conftest import REPO, pcamflow, snakemake
from pcam_fixtures import alternating_labels, random_tiles, write_split

from pcamflow import constants
from pcamflow.config import grid_points, validate_config
from pcamflow.data.download import (
    Source,
    checksum_provenance,
    download_file,
    download_meta,
    download_missing,
    missing_files,
    part_path,
    record_path,
)
from pcamflow.errors import PcamflowError
from pcamflow.io import file_digest

SIZES = {"train": 12, "valid": 4, "test": 4}
FILES = [(s, k) for s in constants.SPLITS for k in ("x", "y")]
FOLDER = "/records/2546921/files"  # where the server keeps the files, as Zenodo does
RAW_NAMES = [constants.raw_filename(s, k) for s, k in FILES]


# ---- the server ----


@dataclass
class Served:
    """What the test server holds and what it was asked for."""

    files: dict[str, bytes]  # URL file name -> body
    cut_after: dict[str, int] = field(default_factory=dict)  # name -> bytes sent before cutting once
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (name, Range header)

    def asked_for(self, name: str) -> list[str | None]:
        return [rng for asked, rng in self.requests if asked == name]


def _handler(served: Served):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            folder, name = self.path.rsplit("/", 1)
            wanted = self.headers.get("Range")
            served.requests.append((name, wanted))
            if folder != FOLDER or name not in served.files:
                self.send_error(404, "File not found")
                return
            body = served.files[name]
            start = (
                int(re.match(r"bytes=(\d+)-", wanted).group(1)) if wanted and not served.ignore_range else 0
            )
            if start >= len(body) and wanted:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            cut = served.cut_after.pop(name, None)
            self.wfile.write(body[start : start + cut] if cut is not None else body[start:])
            self.close_connection = True  # after a cut: the client sees the connection close early

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture(scope="module")
def pcam_gz(tmp_path_factory):
    """Small PCAM-format .h5 files: {name: (h5 bytes, gz bytes)}."""
    raw = tmp_path_factory.mktemp("raw")
    for i, (split, n) in enumerate(SIZES.items()):
        write_split(raw, split, random_tiles(n, seed=i), alternating_labels(n))
    files = {}
    for name in RAW_NAMES:
        h5 = (raw / name).read_bytes()
        files[name] = (h5, gzip.compress(h5, mtime=0))
    return files


@pytest.fixture
def server(pcam_gz):
    served = Served(files={f"{name}.gz": gz for name, (_, gz) in pcam_gz.items()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    served.base_url = f"http://127.0.0.1:{httpd.server_address[1]}{FOLDER}"
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _source(served: Served, pcam_gz, **kw) -> Source:
    md5 = {f"{s}_{k}": hashlib.md5(pcam_gz[constants.raw_filename(s, k)][1]).hexdigest() for s, k in FILES}
    return Source(
        **{"base_url": served.base_url, "timeout_s": 5, "retries": 2, "backoff_s": 0, "md5": md5, **kw}
    )


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- the library ----


def test_happy_path_downloads_verifies_and_gunzips_all_six(server, pcam_gz, tmp_path):
    records = download_missing(tmp_path, _source(server, pcam_gz), progress=False)

    assert [r["file"] for r in records] == RAW_NAMES
    for name, (h5, gz) in pcam_gz.items():
        assert (tmp_path / name).read_bytes() == h5
        record = yaml.safe_load(record_path(tmp_path / name).read_text())
        assert record["h5_xxh128"] == file_digest(tmp_path / name, "xxh128")
        assert record["gz_md5"] == hashlib.md5(gz).hexdigest()
    # nothing but the six files and their records: no .part or temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        RAW_NAMES + [n + ".download.json" for n in RAW_NAMES]
    )
    assert all(rng is None for _, rng in server.requests)


def test_transfer_cut_off_halfway_is_resumed_with_range(server, pcam_gz, tmp_path):
    name = constants.raw_filename("train", "x")
    gz = pcam_gz[name][1]
    half = len(gz) // 2
    server.cut_after[f"{name}.gz"] = half

    download_file(tmp_path, "train", "x", _source(server, pcam_gz, retries=1), progress=False)

    assert server.asked_for(f"{name}.gz") == [None, f"bytes={half}-"]
    assert (tmp_path / name).read_bytes() == pcam_gz[name][0]
    assert not part_path(tmp_path / name).exists()


def test_interrupted_run_keeps_the_part_and_the_next_run_resumes(server, pcam_gz, tmp_path):
    name = constants.raw_filename("valid", "x")
    half = len(pcam_gz[name][1]) // 2
    server.cut_after[f"{name}.gz"] = half

    with pytest.raises(
        PcamflowError, match=r"gave up after 1 attempt\); \d+ bytes kept in .*\.part, run again to resume"
    ):
        download_file(tmp_path, "valid", "x", _source(server, pcam_gz, retries=0), progress=False)
    assert part_path(tmp_path / name).stat().st_size == half
    assert not (tmp_path / name).exists()

    download_file(tmp_path, "valid", "x", _source(server, pcam_gz, retries=0), progress=False)
    assert server.asked_for(f"{name}.gz")[-1] == f"bytes={half}-"
    assert (tmp_path / name).read_bytes() == pcam_gz[name][0]


def test_complete_part_left_before_gunzip_is_not_downloaded_again(server, pcam_gz, tmp_path):
    name = constants.raw_filename("test", "y")
    part_path(tmp_path / name).write_bytes(pcam_gz[name][1])

    download_file(tmp_path, "test", "y", _source(server, pcam_gz), progress=False)

    assert (tmp_path / name).read_bytes() == pcam_gz[name][0]
    assert server.asked_for(f"{name}.gz") == [f"bytes={len(pcam_gz[name][1])}-"]  # answered 416, no body


def test_server_ignoring_range_restarts_from_zero(server, pcam_gz, tmp_path):
    name = constants.raw_filename("test", "x")
    part_path(tmp_path / name).write_bytes(b"stale bytes of an older attempt")
    server.ignore_range = True

    download_file(tmp_path, "test", "x", _source(server, pcam_gz), progress=False)

    assert (tmp_path / name).read_bytes() == pcam_gz[name][0]


def test_md5_mismatch_names_the_file_removes_it_and_touches_nothing_else(server, pcam_gz, tmp_path):
    write_split(tmp_path, "train", random_tiles(3, seed=9), alternating_labels(3))  # files already there
    (tmp_path / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    name = constants.raw_filename("valid", "y")
    actual = hashlib.md5(pcam_gz[name][1]).hexdigest()
    source = _source(server, pcam_gz)
    source.md5["valid_y"] = "0" * 32

    with pytest.raises(PcamflowError) as err:
        download_file(tmp_path, "valid", "y", source, progress=False)

    message = str(err.value)
    assert "\n" not in message
    assert f"{name}.gz" in message and actual in message and "0" * 32 in message
    assert _snapshot(tmp_path) == before  # no .h5, no .part, no record; the other files untouched


def test_published_md5s_are_the_default(server, pcam_gz, tmp_path):
    """The synthetic files are not the real ones, so the real (default) md5s reject them."""
    source = Source(base_url=server.base_url, retries=0, backoff_s=0)
    with pytest.raises(PcamflowError, match=constants.GZ_MD5["test_y"]):
        download_file(tmp_path, "test", "y", source, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_404_is_one_clear_line_without_retries(server, pcam_gz, tmp_path):
    source = _source(server, pcam_gz, base_url=server.base_url + "/nowhere")
    with pytest.raises(PcamflowError) as err:
        download_file(tmp_path, "train", "y", source, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert "HTTP 404" in message and "/nowhere/camelyonpatch_level_2_split_train_y.h5.gz" in message
    assert len(server.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_refused_connection_is_one_clear_line(tmp_path):
    source = Source(base_url=f"http://127.0.0.1:{_free_port()}/files", timeout_s=5, retries=1, backoff_s=0)
    with pytest.raises(PcamflowError) as err:
        download_file(tmp_path, "train", "x", source, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert "connection refused" in message and "gave up after 2 attempts" in message
    assert list(tmp_path.iterdir()) == []


def test_only_missing_files_are_downloaded(server, pcam_gz, tmp_path):
    # a course-style copy of train (float32) and valid_y already there: kept as they are
    write_split(tmp_path, "train", random_tiles(5, seed=7).astype("float32"), alternating_labels(5))
    (tmp_path / constants.raw_filename("valid", "y")).write_bytes(
        pcam_gz[constants.raw_filename("valid", "y")][0]
    )
    present = _snapshot(tmp_path)
    assert missing_files(tmp_path) == [("valid", "x"), ("test", "x"), ("test", "y")]

    download_missing(tmp_path, _source(server, pcam_gz), progress=False)

    assert sorted(name for name, _ in server.requests) == sorted(
        f"{constants.raw_filename(s, k)}.gz" for s, k in [("valid", "x"), ("test", "x"), ("test", "y")]
    )
    assert {k: v for k, v in _snapshot(tmp_path).items() if k in present} == present
    assert missing_files(tmp_path) == []


def test_checksum_provenance(server, pcam_gz, tmp_path):
    name = constants.raw_filename("test", "y")
    overridden = _source(server, pcam_gz)
    download_file(tmp_path, "test", "y", overridden, progress=False)
    h5 = tmp_path / name

    assert (
        checksum_provenance(h5, file_digest(h5, "xxh128"))["matches_published"] is False
    )  # md5 came from an override
    assert "changed since" in checksum_provenance(h5, "f" * 32)["how"]
    record_path(h5).unlink()
    assert (
        checksum_provenance(h5, file_digest(h5, "xxh128"))["matches_published"] is None
    )  # a copy from elsewhere


def test_meta_csvs_are_best_effort(server, pcam_gz, tmp_path):
    for split in ("train", "valid"):  # the server has no test meta CSV
        server.files[constants.meta_filename(split)] = f"coord_y,coord_x,wsi\n1,2,{split}_001\n".encode()

    fetched = download_meta(tmp_path, _source(server, pcam_gz, retries=0))

    assert fetched == [constants.meta_filename("train"), constants.meta_filename("valid")]
    assert (tmp_path / constants.meta_filename("valid")).read_text().endswith("valid_001\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == fetched  # no partial file of the missing one


# ---- the command line ----


def test_cli_404_exits_2_with_one_line(server, tmp_path):
    proc = pcamflow(
        "download",
        "--data-dir",
        str(tmp_path),
        "--base-url",
        server.base_url + "/gone",
        "--retries",
        "0",
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("pcamflow: error: ") and "HTTP 404" in lines[-1]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("option", "value", "key"),
    [
        ("--base-url", "zenodo.org/records/2546921/files", "download.base_url"),
        ("--retries", "-1", "download.retries"),
    ],
)
def test_cli_bad_option_exits_2_with_one_line_naming_the_key(tmp_path, option, value, key):
    proc = pcamflow("download", "--data-dir", str(tmp_path), option, value, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("pcamflow: error: ") and key in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("base_url", ["", "zenodo.org/records/2546921/files"])
def test_config_base_url_without_scheme_fails_before_any_job(base_url):
    with pytest.raises(PcamflowError, match="download.base_url"):
        validate_config({"download": {"base_url": base_url}})


def test_cli_with_every_file_present_makes_no_connection(tmp_path):
    for name in RAW_NAMES:
        (tmp_path / name).write_bytes(b"a course copy")
    unreachable = f"http://127.0.0.1:{_free_port()}/files"
    proc = pcamflow("download", "--data-dir", str(tmp_path), "--base-url", unreachable, "--retries", "0")
    assert "downloaded 0 file(s), 6 already present" in proc.stdout
    assert all((tmp_path / name).read_bytes() == b"a course copy" for name in RAW_NAMES)


def test_cli_fetches_the_missing_meta_csvs_beside_files_already_present(server, tmp_path):
    """docs/snellius.md's `pcamflow download --data-dir DIR --meta`, from the fake Zenodo."""
    for name in RAW_NAMES:
        (tmp_path / name).write_bytes(b"a course copy")
    for split in ("train", "valid"):  # the server has no test meta CSV
        server.files[constants.meta_filename(split)] = f"coord_y,coord_x,wsi\n1,2,{split}_001\n".encode()

    proc = pcamflow("download", "--data-dir", str(tmp_path), "--meta", "--base-url", server.base_url)

    assert "downloaded 0 file(s), 6 already present, 2 meta CSV(s)" in proc.stdout
    assert sorted(name for name, _ in server.requests if name.endswith(".csv")) == sorted(
        constants.meta_filename(split) for split in constants.SPLITS
    )
    assert (tmp_path / constants.meta_filename("train")).read_text().endswith("train_001\n")
    assert not (tmp_path / constants.meta_filename("test")).exists()
    assert all((tmp_path / name).read_bytes() == b"a course copy" for name in RAW_NAMES)


# ---- the workflow ----


def _job_counts(proc) -> dict[str, int]:
    stats = proc.stdout.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


def _plan(workflow_dir, data_dir) -> dict[str, int]:
    """Jobs a dry run of the real experiment (config/pcam.yaml) plans with this data_dir."""
    proc = snakemake(
        workflow_dir, "-n", "--configfile", "config/pcam.yaml", "--config", f"data_dir={data_dir}"
    )
    return _job_counts(proc)


def test_empty_data_dir_plans_download_then_audit_prepare_train(workflow_dir, tmp_path):
    counts = _plan(workflow_dir, tmp_path / "pcam")
    assert counts["download"] == 6
    assert counts["audit"] == 3 and counts["prepare"] == 1
    cfg = validate_config(yaml.safe_load((REPO / "config" / "pcam.yaml").read_text()))
    assert counts["train"] == len(grid_points(cfg)) * len(cfg["seeds"])


def test_files_on_disk_plan_no_download_however_old(workflow_dir, tmp_path):
    for name in RAW_NAMES:  # course copies, copied years ago: older than every file of the workflow
        (tmp_path / name).touch()
        os.utime(tmp_path / name, (1.5e9, 1.5e9))
    counts = _plan(workflow_dir, tmp_path)
    assert "download" not in counts
    assert counts["audit"] == 3 and counts["prepare"] == 1 and counts["train"] > 0


@pytest.mark.slow
def test_rule_downloads_only_the_missing_files(workflow_dir, server, pcam_gz, tmp_path):
    data_dir = tmp_path / "pcam"
    write_split(data_dir, "train", random_tiles(3, seed=5), alternating_labels(3))
    write_split(data_dir, "valid", random_tiles(2, seed=6), alternating_labels(2))
    present = _snapshot(data_dir)
    md5 = _source(server, pcam_gz).md5
    config = {
        "dataset": "pcam",
        "data_dir": str(data_dir),
        "download": {"base_url": server.base_url, "md5": md5},
    }
    (tmp_path / "pcam.yaml").write_text(yaml.safe_dump(config))
    # files already there are inputs of the workflow, not outputs: only the missing ones are targets
    targets = [str(data_dir / name) for name in RAW_NAMES if name not in present]

    snakemake(workflow_dir, *targets, "--cores", "1", "--configfile", str(tmp_path / "pcam.yaml"))

    assert sorted(name for name, _ in server.requests) == sorted(
        f"{n}.gz" for n in RAW_NAMES if n not in present
    )
    assert {k: v for k, v in _snapshot(data_dir).items() if k in present} == present
    for split, kind in FILES:
        name = constants.raw_filename(split, kind)
        if name not in present:
            assert (data_dir / name).read_bytes() == pcam_gz[name][0]
            assert "verified" in (workflow_dir / "results/logs/download" / f"{name}.log").read_text()


@pytest.mark.slow
def test_rule_failure_is_one_clear_line(workflow_dir, tmp_path):
    config = {
        "dataset": "pcam",
        "data_dir": str(tmp_path / "pcam"),
        "download": {"base_url": f"http://127.0.0.1:{_free_port()}"},
    }
    config["download"]["retries"] = 0
    (tmp_path / "pcam.yaml").write_text(yaml.safe_dump(config))
    target = str(tmp_path / "pcam" / constants.raw_filename("test", "y"))

    proc = snakemake(
        workflow_dir, target, "--cores", "1", "--configfile", str(tmp_path / "pcam.yaml"), check=False
    )

    assert proc.returncode != 0
    assert re.search(r"PcamflowError .*\n.*test_y\.h5\.gz: connection refused", proc.stderr)
    assert "Traceback" not in proc.stderr
    assert (
        "connection refused"
        in (workflow_dir / "results/logs/download/camelyonpatch_level_2_split_test_y.h5.log").read_text()
    )
    assert not (tmp_path / "pcam").exists() or not any((tmp_path / "pcam").iterdir())
