"""rtdetrv2_np.hub against a local stand-in for the hub (tests/fake_hub.py) on 127.0.0.1: downloads, the cache
layout shared with huggingface_hub, offline mode, failures. No internet is used."""

import hashlib
import os
import socket

import pytest

from fake_hub import LFS, RENAMED, REPO, FakeHub, git_blob_sha1
from rtdetrv2_np import hub as hubmod
from rtdetrv2_np.errors import RTDetrError
from rtdetrv2_np.hub import hf_hub_download, hub_cache_dir, hub_endpoint, snapshot_model

FOLDER = "models--tiny-org--tiny-model"


@pytest.fixture
def fake():
    server = FakeHub()
    yield server
    server.close()


@pytest.fixture
def env(monkeypatch, tmp_path, fake):
    """A private cache, the fake hub as endpoint, no offline flags, no token, no proxies."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HOME", "HUGGINGFACE_HUB_CACHE",
                 "XDG_CACHE_HOME", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
    return tmp_path / "cache"


def files_of(fake, revision):
    return fake.commits[fake.refs.get(revision, revision)]


def leftovers(cache):
    """Temporary or partial files anywhere in the cache."""
    return [os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs if f.endswith((".incomplete", ".tmp"))]


def blob_name(data, filename):
    return hashlib.sha256(data).hexdigest() if filename in LFS else git_blob_sha1(data)


def test_fresh_download_layout(env, fake):
    folder = snapshot_model(REPO)
    commit = fake.refs["main"]
    assert folder == os.path.join(env, FOLDER, "snapshots", commit)
    for name in ("config.json", "model.safetensors"):
        data = files_of(fake, "main")[name]
        pointer = os.path.join(folder, name)
        assert open(pointer, "rb").read() == data
        assert os.path.islink(pointer)                                     # huggingface_hub's relative symlink
        assert os.readlink(pointer) == f"../../blobs/{blob_name(data, name)}"
    assert open(os.path.join(env, FOLDER, "refs", "main")).read() == commit   # no newline, as huggingface_hub
    assert leftovers(env) == []
    # HEAD for each file; config.json fetched from the hub, the LFS file from the CDN (the redirect's Location).
    assert [r[:2] for r in fake.log] == [("hub", "HEAD"), ("hub", "GET"), ("hub", "HEAD"), ("cdn", "GET")]
    assert "/resolve/main/config.json" in fake.log[0][2]
    assert f"/resolve/{commit}/model.safetensors" in fake.log[2][2]       # the weights pinned to config's commit


def test_second_call_reuses_the_cache(env, fake):
    first = snapshot_model(REPO)
    n = len(fake.log)
    assert snapshot_model(REPO) == first
    assert [r[1] for r in fake.log[n:]] == ["HEAD"]                      # revision "main" is checked, not fetched
    # (the weights are then asked for by commit hash, which needs no request at all once cached)
    n = len(fake.log)
    assert hf_hub_download(REPO, "model.safetensors", revision=fake.refs["main"]) == \
        os.path.join(first, "model.safetensors")
    assert len(fake.log) == n
    # With the hub gone, the cache is used through refs/main, as huggingface_hub does.
    fake.close()
    assert snapshot_model(REPO) == first


def test_offline_with_cache(env, fake, monkeypatch):
    first = snapshot_model(REPO)
    n = len(fake.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert snapshot_model(REPO) == first
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")                     # huggingface_hub honours this one too
    assert snapshot_model(REPO) == first
    assert len(fake.log) == n                                              # no request at all


def test_offline_without_cache(env, fake, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RTDetrError, match=r"HF_HUB_OFFLINE.*run once with network access.*--model") as e:
        snapshot_model(REPO)
    assert "\n" not in str(e.value)
    assert fake.log == []


def test_no_network_and_no_cache(env, monkeypatch):
    with socket.socket() as s:                                            # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(RTDetrError, match=r"failed .*not in the cache.*--model"):
        snapshot_model(REPO)


def test_interrupted_transfer_leaves_nothing(env, fake):
    fake.truncate = True
    with pytest.raises(RTDetrError, match=r"model.safetensors.*interrupted after 1500 of 3000 bytes"):
        snapshot_model(REPO)
    blobs = os.listdir(os.path.join(env, FOLDER, "blobs"))
    assert hashlib.sha256(files_of(fake, "main")["model.safetensors"]).hexdigest() not in blobs
    assert leftovers(env) == []
    assert not os.path.lexists(os.path.join(env, FOLDER, "snapshots", fake.refs["main"], "model.safetensors"))
    fake.truncate = False                                                   # a retry then works
    folder = snapshot_model(REPO)
    assert open(os.path.join(folder, "model.safetensors"), "rb").read() == files_of(fake, "main")["model.safetensors"]


def test_checksum_mismatch(env, fake):
    fake.corrupt = True
    with pytest.raises(RTDetrError, match=r"failed verification: its sha256 is [0-9a-f]{64}, the hub says "
                                          r"[0-9a-f]{64}"):
        hf_hub_download(REPO, "model.safetensors")
    blobs = os.path.join(env, FOLDER, "blobs")
    assert not os.path.isdir(blobs) or os.listdir(blobs) == []
    assert leftovers(env) == []


@pytest.mark.parametrize("revision", ["v1.0", "refs/pr/1"])
def test_revision_names(env, fake, revision):
    path = hf_hub_download(REPO, "config.json", revision=revision)
    commit = fake.refs[revision]
    assert path == os.path.join(env, FOLDER, "snapshots", commit, "config.json")
    assert open(path, "rb").read() == files_of(fake, revision)["config.json"]
    assert open(os.path.join(env, FOLDER, "refs", *revision.split("/"))).read() == commit
    quoted = revision.replace("/", "%2F")                                 # quote(revision, safe="")
    assert f"/resolve/{quoted}/config.json" in fake.log[0][2]


def test_commit_hash_revision_writes_no_ref(env, fake):
    commit = fake.refs["v1.0"]
    hf_hub_download(REPO, "config.json", revision=commit)
    assert not os.path.exists(os.path.join(env, FOLDER, "refs"))


def test_nested_filename(env, fake):
    path = hf_hub_download(REPO, "sub/dir/notes.txt")
    data = files_of(fake, "main")["sub/dir/notes.txt"]
    assert open(path, "rb").read() == data
    assert os.readlink(path) == f"../../../../blobs/{git_blob_sha1(data)}"


def test_endpoint_honoured(env, fake, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint + "/")                # trailing slash stripped, as hf does
    hf_hub_download(REPO, "config.json")
    assert fake.requests("hub", "HEAD")
    monkeypatch.delenv("HF_ENDPOINT")
    assert hub_endpoint() == "https://huggingface.co"


def test_token_goes_to_the_hub_only(env, fake, monkeypatch):
    fake.token = "hf_secret"
    with pytest.raises(RTDetrError, match=r"HTTP 401.*set HF_TOKEN"):
        snapshot_model(REPO)
    fake.log.clear()
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    snapshot_model(REPO)
    assert all(r[3] == "Bearer hf_secret" for r in fake.requests("hub"))
    assert [r[3] for r in fake.requests("cdn")] == [None]                 # never sent to another origin


def test_renamed_repo_redirect_followed(env, fake):
    path = hf_hub_download(RENAMED, "model.safetensors")
    assert open(path, "rb").read() == files_of(fake, "main")["model.safetensors"]
    assert f"models--tiny-org--old-name{os.sep}snapshots" in path          # cached under the name asked for


def test_not_found(env, fake):
    with pytest.raises(RTDetrError, match=r"HTTP 404.*check the repository id, the file name and the revision"):
        hf_hub_download(REPO, "nothere.bin")
    with pytest.raises(RTDetrError, match=r"HTTP 404"):
        hf_hub_download(REPO, "config.json", revision="no-such-branch")
    with pytest.raises(RTDetrError, match=r"HTTP 401.*private or gated"):
        hf_hub_download("tiny-org/missing", "config.json")


@pytest.mark.parametrize("repo_id, filename, revision", [
    ("../escape", "config.json", "main"), ("a--b/c", "config.json", "main"), ("org/name", "../x", "main"),
    ("org/name", "/etc/passwd", "main"), ("org/name", "config.json", "../../x"), ("org/name", "", "main")])
def test_bad_names_refused(env, fake, repo_id, filename, revision):
    with pytest.raises(RTDetrError):
        hf_hub_download(repo_id, filename, revision=revision)
    assert fake.log == []


def test_copy_where_symlinks_fail(env, fake, monkeypatch):
    def no_symlink(*args, **kwargs):
        raise OSError("symlinks not supported here")
    monkeypatch.setattr(hubmod.os, "symlink", no_symlink)
    folder = snapshot_model(REPO)
    pointer = os.path.join(folder, "model.safetensors")
    assert not os.path.islink(pointer)
    assert open(pointer, "rb").read() == files_of(fake, "main")["model.safetensors"]
    assert leftovers(env) == []


def write_hf_layout(cache, fake, revision="main"):
    """A cache laid out by hand the way huggingface_hub writes it (blobs, relative symlinks, refs without newline)."""
    commit = fake.refs[revision]
    folder = os.path.join(cache, FOLDER)
    os.makedirs(os.path.join(folder, "blobs"))
    os.makedirs(os.path.join(folder, "snapshots", commit))
    os.makedirs(os.path.join(folder, "refs"))
    for name in ("config.json", "model.safetensors"):
        data = files_of(fake, revision)[name]
        blob = blob_name(data, name)
        with open(os.path.join(folder, "blobs", blob), "wb") as f:
            f.write(data)
        os.symlink(f"../../blobs/{blob}", os.path.join(folder, "snapshots", commit, name))
    with open(os.path.join(folder, "refs", revision), "w") as f:
        f.write(commit)
    return os.path.join(folder, "snapshots", commit)


def test_huggingface_hub_cache_is_found(env, fake, monkeypatch):
    expected = write_hf_layout(env, fake)
    assert snapshot_model(REPO) == expected                                # online: HEADs only, no download
    assert not fake.requests(method="GET")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(fake.log)
    assert snapshot_model(REPO) == expected                                # offline: through refs/main
    assert len(fake.log) == n


def test_cache_dir_resolution(monkeypatch, tmp_path):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == str(tmp_path / "home" / ".cache" / "huggingface" / "hub")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == str(tmp_path / "xdg" / "huggingface" / "hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert hub_cache_dir() == str(tmp_path / "hfhome" / "hub")
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hub_cache_dir() == str(tmp_path / "legacy")
    monkeypatch.setenv("HF_HUB_CACHE", "~/hubcache")
    assert hub_cache_dir() == str(tmp_path / "home" / "hubcache")


def test_cache_dir_argument(env, fake, tmp_path):
    path = hf_hub_download(REPO, "config.json", cache_dir=str(tmp_path / "elsewhere"))
    assert path.startswith(str(tmp_path / "elsewhere" / FOLDER))
    assert not os.path.exists(env)
