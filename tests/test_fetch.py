"""`convert --fetch`: a released network downloaded, verified and converted in one step, against
an HTTP server on 127.0.0.1 serving a random-weight file in the official layout."""

import hashlib
import http.server
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import ROOT

torch = pytest.importorskip("torch", reason="PyTorch (reading .pth files) is not installed")
from test_interop import randomised  # noqa: E402

from dcjax import releases  # noqa: E402
from dcjax.models.interop import ConvertError, load_network_dir  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, the file's bytes, its sha256): /good serves the whole file, /cut announces the
    whole length and closes the connection halfway, /other serves different bytes."""
    path = tmp_path_factory.mktemp("release") / "checkpoint.pth.tar"
    net = randomised("alexnet", k=7, seed=3, fc=16)
    torch.save({"epoch": 500, "arch": "alexnet", "state_dict": net.state_dict()}, path)
    body = path.read_bytes()
    other = bytearray(body)
    other[-1] ^= 0xFF

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server interface
            name = self.path.split("/")[1]
            data = {"good": body, "cut": body, "other": bytes(other)}.get(name)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data if name != "cut" else data[: len(data) // 2])
            self.wfile.flush()
            if name == "cut":
                self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", body, hashlib.sha256(body).hexdigest()
    server.shutdown()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DCJAX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "releases"


def fetch_cli(*args, env_cache):
    import os

    env = dict(os.environ, DCJAX_CACHE_DIR=str(env_cache.parent))
    return subprocess.run([sys.executable, "-m", "dcjax.convert", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_refused_and_nothing_kept(run, cache, out):
    assert run.returncode == 2, run.stderr
    assert not out.exists()
    assert not cache.exists() or list(cache.iterdir()) == []
    return run.stderr.strip().splitlines()[-1]


def test_a_listed_release_is_downloaded_verified_and_converted(served, cache, tmp_path,
                                                               monkeypatch):
    from dcjax.convert import fetch

    base, body, digest = served
    monkeypatch.setitem(releases.RELEASES, "test_alexnet", releases.Release(
        f"{base}/good/checkpoint.pth.tar", "alexnet", "deepcluster", True, "random weights",
        digest))
    info = fetch("test_alexnet", None, str(tmp_path / "net"))
    assert (info["arch"], info["k"], info["fc_dim"]) == ("alexnet", 7, 16)
    params, _, saved = load_network_dir(tmp_path / "net")
    assert saved["source_sha256"] == digest and saved["source_url"].endswith("/good/checkpoint.pth.tar")
    state = torch.load(str(next(cache.iterdir())), weights_only=True)["state_dict"]
    np.testing.assert_array_equal(params["top_layer"]["bias"], state["top_layer.bias"].numpy())
    assert [p.name for p in cache.iterdir()] == [next(cache.iterdir()).name]  # no .part left
    assert next(cache.iterdir()).read_bytes() == body

    # The second fetch reads the verified cache; a table entry that names another architecture
    # is refused before anything is written.
    fetch("test_alexnet", None, str(tmp_path / "net2"))
    monkeypatch.setitem(releases.RELEASES, "test_wrong", releases.Release(
        f"{base}/good/checkpoint.pth.tar", "vgg16", "deepcluster", True, "mislabelled", digest))
    with pytest.raises(ConvertError, match="not the vgg16 deepcluster that dcjax's table lists"):
        fetch("test_wrong", None, str(tmp_path / "net3"))
    assert not (tmp_path / "net3").exists()


def test_a_wrong_checksum_is_refused_and_nothing_is_kept(served, cache, tmp_path):
    base, _, digest = served
    run = fetch_cli(f"--fetch={base}/other/checkpoint.pth.tar", f"--sha256={digest}",
                    f"--out={tmp_path / 'net'}", env_cache=cache)
    line = assert_refused_and_nothing_kept(run, cache, tmp_path / "net")
    assert line.startswith("error: --fetch:") and f"not the expected {digest}" in line


def test_an_interrupted_download_leaves_nothing_that_is_used_later(served, cache, tmp_path):
    base, body, digest = served
    run = fetch_cli(f"--fetch={base}/cut/checkpoint.pth.tar", f"--sha256={digest}",
                    f"--out={tmp_path / 'net'}", env_cache=cache)
    line = assert_refused_and_nothing_kept(run, cache, tmp_path / "net")
    assert "stopped after" in line and f"of {len(body):,}" in line and "nothing was kept" in line

    # A .part left by a killed process is never read: the next download replaces it.
    final = releases._final_path(f"{base}/good/checkpoint.pth.tar")
    cache.mkdir(parents=True, exist_ok=True)
    (cache / (final.name + ".stale.part")).write_bytes(body[:100])
    run = fetch_cli(f"--fetch={base}/good/checkpoint.pth.tar", f"--sha256={digest}",
                    f"--out={tmp_path / 'net'}", env_cache=cache)
    assert run.returncode == 0, run.stderr
    assert "(verified)" in run.stdout
    assert [p.name for p in cache.iterdir()] == [final.name]
    assert json.loads((tmp_path / "net" / "network.json").read_text())["source_sha256"] == digest


def test_fetch_arguments_are_checked():
    with pytest.raises(ConvertError, match="the names are deepcluster_alexnet"):
        releases.resolve("alexnet", None)
    with pytest.raises(ConvertError, match="give its checksum with --sha256"):
        releases.resolve("https://example.org/x.pth", None)
    with pytest.raises(ConvertError, match="64 hexadecimal digits"):
        releases.resolve("deepcluster_alexnet", "abc")
    url, expected, release = releases.resolve("deepclusterv2_800ep", None)
    assert url.endswith("/deepclusterv2_800ep_pretrain.pth.tar") and release.arch == "resnet50"
    assert "deepclusterv2_800ep" in releases.table()
