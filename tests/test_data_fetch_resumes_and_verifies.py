"""`perank data fetch` downloads pinned files resumably and keeps only bytes that match their sha256.

A small synthetic mirror slice is served from a loopback HTTP server (with Range support and a
switch that drops the connection midway) and read through file:// URLs and a plain directory;
the manifest pins it with real sizes and sha256s. Nothing here touches the network.
"""
import hashlib
import http.server
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers_processes import sigint_default
from perank_jax.cli import main
from perank_jax.data.fetch import MANIFEST, FetchError, fetch_all, is_pinned, load_manifest
from perank_jax.data.trec import DataError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES = {"dl20/a.json": b'{"x": 1}\n' * 5000, "scifact/b.txt": bytes(range(256)) * 300, "wiki/LICENSE": b"MIT\n"}


def url_path(name):
    return f"/owner/repo/{COMMIT}/src/{name}"


def manifest_for(files):
    return {"format": 1, "files": [
        {"name": n, "url": f"https://raw.githubusercontent.com{url_path(n)}", "size": len(b),
         "sha256": hashlib.sha256(b).hexdigest(), "source": "synthetic", "terms": "test only"}
        for n, b in files.items()]}


class Mirror(http.server.ThreadingHTTPServer):
    """Serves `files` (URL path -> bytes) with Range; `drop[path] = n` cuts the next reply after n
    bytes; paths in `slow` trickle out 1 KB every 200 ms (slow enough that a Ctrl-C lands midway on a loaded machine)."""
    daemon_threads = True

    def __init__(self, files):
        self.files, self.drop, self.slow, self.requests = dict(files), {}, set(), []
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        cut = srv.drop.pop(self.path, None)
        body = data[start:] if cut is None else data[start:start + cut]
        if self.path in srv.slow:
            for i in range(0, len(body), 1024):
                self.wfile.write(body[i:i + 1024])
                self.wfile.flush()
                time.sleep(0.2)
        else:
            self.wfile.write(body)
        if cut is not None:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)      # the connection drops midway
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    srv = Mirror({url_path(n): b for n, b in FILES.items()})
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def base(srv):
    return f"http://127.0.0.1:{srv.server_address[1]}"


def snapshot(root: Path, skip: Path):
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if skip not in p.parents and p != skip}


def assert_verified(out: Path, files=FILES):
    for n, b in files.items():
        assert (out / "downloads" / n).read_bytes() == b
    assert not list(out.rglob("*.part"))


def test_a_fresh_fetch_over_http_verifies_every_file_and_touches_nothing_outside_out(tmp_path, server):
    (tmp_path / "neighbour.txt").write_text("keep")
    out = tmp_path / "raw"
    before = snapshot(tmp_path, out)
    got = fetch_all(out, manifest=manifest_for(FILES), mirror=base(server))
    assert set(got) == set(FILES)
    assert_verified(out)
    assert snapshot(tmp_path, out) == before
    assert sorted(p for p, _ in server.requests) == sorted(url_path(n) for n in FILES)
    server.requests.clear()
    fetch_all(out, manifest=manifest_for(FILES), mirror=base(server))      # all cached: no request
    assert server.requests == []


@pytest.mark.parametrize("as_url", [True, False], ids=["file-url", "directory"])
def test_a_mirror_of_file_urls_or_a_plain_directory_gives_the_same_files(tmp_path, as_url):
    mirror = tmp_path / "mirror"
    for n, b in FILES.items():
        (mirror / url_path(n)[1:]).parent.mkdir(parents=True, exist_ok=True)
        (mirror / url_path(n)[1:]).write_bytes(b)
    out = tmp_path / "out"
    fetch_all(out, manifest=manifest_for(FILES), mirror=mirror.as_uri() if as_url else str(mirror))
    assert_verified(out)


def test_a_connection_dropped_midway_is_resumed_with_a_range_request(tmp_path, server):
    name = "dl20/a.json"
    server.drop[url_path(name)] = 10_000
    fetch_all(tmp_path / "out", manifest=manifest_for(FILES), mirror=base(server))
    assert_verified(tmp_path / "out")
    assert [r for p, r in server.requests if p == url_path(name)] == [None, "bytes=10000-"]


def test_ctrl_c_midway_exits_130_keeps_the_part_and_the_next_run_resumes_it(tmp_path, server):
    """A real `perank data fetch` process interrupted by SIGINT while a file trickles in."""
    name = "dl20/a.json"
    server.slow.add(url_path(name))
    (tmp_path / "m.json").write_text(json.dumps(manifest_for({name: FILES[name]})))
    out = tmp_path / "out"
    argv = ["data", "fetch", "--out", str(out), "--mirror", base(server), "--manifest", str(tmp_path / "m.json"),
            "--download-only"]
    proc = subprocess.Popen([sys.executable, "-m", "perank_jax.cli", *argv], stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)
    part = out / "downloads" / (name + ".part")
    deadline = time.time() + 30
    while not (part.exists() and part.stat().st_size > 4096) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    kept = part.stat().st_size
    assert 0 < kept < len(FILES[name]) and not (out / "downloads" / name).exists()
    server.slow.clear()
    assert main(argv) == 0
    assert (out / "downloads" / name).read_bytes() == FILES[name] and not part.exists()
    assert server.requests[-1] == (url_path(name), f"bytes={kept}-")


def test_a_part_file_left_by_an_earlier_run_is_resumed_not_restarted(tmp_path, server):
    name = "scifact/b.txt"
    part = tmp_path / "out" / "downloads" / (name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(FILES[name][:777])
    fetch_all(tmp_path / "out", manifest=manifest_for(FILES), mirror=base(server))
    assert_verified(tmp_path / "out")
    assert [r for p, r in server.requests if p == url_path(name)] == ["bytes=777-"]


def test_a_corrupted_part_file_is_discarded_and_fetched_afresh(tmp_path, server):
    name = "scifact/b.txt"
    part = tmp_path / "out" / "downloads" / (name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 500)                       # the right length so far, the wrong bytes
    fetch_all(tmp_path / "out", manifest=manifest_for(FILES), mirror=base(server))
    assert_verified(tmp_path / "out")
    assert [r for p, r in server.requests if p == url_path(name)] == ["bytes=500-", None]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupted_or_truncated_cached_file_is_refused_and_fetched_again(tmp_path, server, damage):
    out, name = tmp_path / "out", "dl20/a.json"
    fetch_all(out, manifest=manifest_for(FILES), mirror=base(server))
    f = out / "downloads" / name
    f.write_bytes(FILES[name][:-1] + b"?" if damage == "flip" else FILES[name][:100])
    server.requests.clear()
    fetch_all(out, manifest=manifest_for(FILES), mirror=base(server))
    assert_verified(out)
    assert server.requests == [(url_path(name), None)]


def test_a_wrong_checksum_upstream_is_one_line_exit_2_and_leaves_no_file(tmp_path, server, capsys):
    name = "scifact/b.txt"
    server.files[url_path(name)] = b"X" + FILES[name][1:]        # upstream changed, same size
    (tmp_path / "m.json").write_text(json.dumps(manifest_for(FILES)))
    out = tmp_path / "out"
    code = main(["data", "fetch", "--out", str(out), "--mirror", base(server), "--manifest", str(tmp_path / "m.json"),
                 "--download-only"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith("perank data: error: ") and "sha256" in err and url_path(name) in err, err
    assert not (out / "downloads" / name).exists() and not list(out.rglob("*.part"))
    assert "Traceback" not in capsys.readouterr().err


def test_a_source_shorter_than_pinned_is_refused_and_nothing_kept(tmp_path, server):
    name = "dl20/a.json"
    server.files[url_path(name)] = FILES[name][:1234]
    with pytest.raises(FetchError, match=r"only 1234 of the pinned 45000 bytes"):
        fetch_all(tmp_path / "out", manifest=manifest_for(FILES), mirror=base(server))
    assert not (tmp_path / "out" / "downloads" / name).exists() and not list(tmp_path.rglob("*.part"))


def test_a_source_longer_than_pinned_is_refused_after_reading_one_byte_too_many(tmp_path, server):
    name = "dl20/a.json"
    server.files[url_path(name)] = FILES[name] + b"x" * 10_000_000
    with pytest.raises(FetchError, match=r"a.json: 45001 bytes with a sha256 other than the pinned"):
        fetch_all(tmp_path / "out", manifest=manifest_for(FILES), mirror=base(server))
    assert not (tmp_path / "out" / "downloads" / name).exists() and not list(tmp_path.rglob("*.part"))


def test_a_missing_source_is_one_error_naming_the_url(tmp_path, server):
    files = dict(FILES, **{"wiki/gone.txt": b"never served"})
    manifest = manifest_for(files)
    with pytest.raises(FetchError, match=r"/src/wiki/gone.txt: HTTP 404"):
        fetch_all(tmp_path / "out", manifest=manifest, mirror=base(server))


@pytest.mark.parametrize("field,value,expect", [
    ("sha256", "abc", "sha256 must be 64 lower-case hex digits"),
    ("size", 0, "size must be a positive integer"),
    ("name", "../escape.txt", "name must be a plain relative path"),
    ("name", "/etc/passwd", "name must be a plain relative path"),
    ("url", "ftp://x/y", "url must be an https://"),
    ("terms", "", "source and terms must be non-empty"),
])
def test_a_malformed_manifest_entry_is_one_error_naming_it(field, value, expect):
    m = manifest_for(FILES)
    m["files"][1][field] = value
    with pytest.raises(DataError, match=expect):
        load_manifest(m)
    del m["files"][1][field]
    with pytest.raises(DataError, match=f"files\\[1\\]: missing field\\(s\\) {field}"):
        load_manifest(m)


def test_the_packaged_manifest_pins_every_file_at_a_commit_with_size_checksum_source_and_terms():
    files = load_manifest()
    assert load_manifest(MANIFEST) == files and len(files) >= 20
    for f in files:
        assert is_pinned(f.url), f.url                          # a 40-hex commit or a release asset
        assert f.size > 0 and len(f.sha256) == 64 and f.source.strip() and f.terms.strip()
    assert {f.name.split("/")[0] for f in files} == {"dl20", "dl22", "scifact", "nfcorpus", "wiki", "msmarco-triples"}
    assert not is_pinned("https://raw.githubusercontent.com/o/r/main/x.txt")
