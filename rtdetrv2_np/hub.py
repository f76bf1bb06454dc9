"""Download files from the Hugging Face hub into the cache that transformers uses, with urllib only.

Reproduces `huggingface_hub.hf_hub_download` (huggingface_hub 1.x/2.x `file_download.py::
_hf_hub_download_to_cache_dir`, `get_hf_file_metadata`, `_create_symlink`; constants from `constants.py`) for what
this package needs: plain HTTP, model repos, no Xet protocol, no locks, no progress bars. A file downloaded here is
found by transformers and huggingface_hub, and the other way round, because the cache layout is the same:

    <cache>/models--<ORG>--<NAME>/
        blobs/<etag>                      the file's bytes; for LFS files etag = sha256 of the content, for small
                                          git files the git blob sha1
        snapshots/<commit>/<filename>  -> ../../blobs/<etag>   (relative symlink; a copy where symlinks fail)
        refs/<revision>                   the commit hash the branch or tag pointed at (no newline)

<cache> = cache_dir argument, else $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE (legacy), else $HF_HOME/hub, else
$XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub (constants.py). Environment, read at each call:
HF_ENDPOINT (default https://huggingface.co), HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE in {1, ON, YES, TRUE} (never
touch the network), HF_TOKEN (sent as "Authorization: Bearer", to the hub only), HF_HUB_ETAG_TIMEOUT and
HF_HUB_DOWNLOAD_TIMEOUT (seconds, default 10 each).

Protocol, as huggingface_hub does it:
 1. HEAD {endpoint}/{repo_id}/resolve/{revision}/{filename} (revision URL-quoted with safe="", so "refs/pr/1" ->
    "refs%2Fpr%2F1"), with "Accept-Encoding: identity". Redirects to the same origin (a renamed repo) are followed;
    a redirect to another origin (the CDN, for LFS files) is not: its response carries the metadata, and its
    Location is where to GET. Headers read: X-Repo-Commit (the commit; required), X-Linked-Etag or else ETag (with
    W/ and quotes stripped; required), X-Linked-Size or else Content-Length (expected size).
 2. If snapshots/<commit>/<filename> exists: done. If blobs/<etag> exists: only add the pointer.
 3. Else GET the location into blobs/<etag>.<random>.incomplete (process-unique, as huggingface_hub >= 1.x does to
    survive broken locks; older versions used blobs/<etag>.incomplete), check the byte count against
    Content-Length and the expected size, and the sha256 against the etag when the etag is 64 hex digits; then
    os.replace onto blobs/<etag>. On any failure the temporary file is deleted and nothing is left in blobs/.
 4. Write refs/<revision> (if the revision is not the commit hash itself) and the snapshot pointer.
If the HEAD fails (no network, HTTP error) the file is looked up in the cache through refs/<revision>, as
huggingface_hub does; only when it is not there is it an error. A full 40-hex commit hash as revision that is
already cached is returned without any request.
"""

import hashlib
import os
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.client import HTTPException

from .errors import RTDetrError
from .fileio import atomic_write

DEFAULT_ENDPOINT = "https://huggingface.co"          # huggingface_hub constants._HF_DEFAULT_ENDPOINT
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}             # constants.ENV_VARS_TRUE_VALUES
DEFAULT_TIMEOUT = 10                                  # constants.DEFAULT_ETAG_TIMEOUT, DEFAULT_DOWNLOAD_TIMEOUT (s)
MAX_REDIRECTS = 10                                    # utils/_http.py _MAX_REDIRECTS
CHUNK = 1 << 20                                       # bytes per read while downloading
REGEX_COMMIT_HASH = re.compile(r"[0-9a-f]{40}")       # file_download.REGEX_COMMIT_HASH
REGEX_SHA256 = re.compile(r"[0-9a-f]{64}")            # an LFS etag is the file's sha256
REGEX_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?")
USER_AGENT = f"rtdetrv2_np/0.1; python/{sys.version_info.major}.{sys.version_info.minor}"
HOW_TO_GET_WEIGHTS = ("run once with network access to fill the cache, or download model.safetensors and "
                      "config.json from the model page and pass their folder with --model")


# ---------------------------------------------------------------------------------------------------------------
# Settings from the environment (read at each call, so that tests and long-lived processes see changes)
# ---------------------------------------------------------------------------------------------------------------

def hub_cache_dir():
    """The hub cache folder, resolved like huggingface_hub.constants.HF_HUB_CACHE."""
    env = os.environ.get
    home = env("HF_HOME", os.path.join(env("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
                                       "huggingface"))
    cache = env("HF_HUB_CACHE", env("HUGGINGFACE_HUB_CACHE", os.path.join(os.path.expanduser(home), "hub")))
    return os.path.expandvars(os.path.expanduser(cache))


def hub_endpoint():
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def is_offline():
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return flag is not None and flag.upper() in TRUE_VALUES


def _timeout(name):
    try:
        return float(os.environ.get(name, DEFAULT_TIMEOUT))
    except ValueError:
        raise RTDetrError(f"environment variable {name}={os.environ[name]!r} is not a number of seconds; "
                          f"set it to e.g. 10 or unset it") from None


# ---------------------------------------------------------------------------------------------------------------
# Cache layout
# ---------------------------------------------------------------------------------------------------------------

def repo_folder(repo_id, cache_dir=None):
    """<cache>/models--ORG--NAME, as file_download.repo_folder_name (repo_type "model")."""
    return os.path.join(cache_dir or hub_cache_dir(), "--".join(["models", *repo_id.split("/")]))


def _check_names(repo_id, filename, revision):
    if not isinstance(repo_id, str) or not REGEX_REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise RTDetrError(f"{repo_id!r} is not a hub repository id; use the form ORG/NAME, "
                          f"e.g. PekingU/rtdetr_v2_r18vd")
    parts = filename.replace("\\", "/").split("/")
    if not filename or filename.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise RTDetrError(f"{filename!r} is not a file name inside a repository; give a relative path "
                          f"such as model.safetensors")
    if not revision or any(p in ("", ".", "..") for p in revision.split("/")):
        raise RTDetrError(f"{revision!r} is not a revision; give a branch, tag or commit hash such as main")


def _pointer_path(folder, commit, filename):
    return os.path.join(folder, "snapshots", commit, *filename.split("/"))


def _read_ref(folder, revision):
    """Commit hash for a revision from the cache: the revision itself if it is one, else refs/<revision>."""
    if REGEX_COMMIT_HASH.fullmatch(revision):
        return revision
    try:
        with open(os.path.join(folder, "refs", *revision.split("/"))) as f:
            return f.read().strip()
    except OSError:
        return None


def _cached_file(folder, revision, filename):
    commit = _read_ref(folder, revision)
    if commit is None:
        return None
    path = _pointer_path(folder, commit, filename)
    return path if os.path.exists(path) else None          # exists() follows the symlink: a dangling one is absent


def _write_ref(folder, revision, commit):
    """refs/<revision> := commit, as file_download._cache_commit_hash_for_specific_revision (no newline)."""
    if revision == commit:
        return
    path = os.path.join(folder, "refs", *revision.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if _read_ref(folder, revision) != commit:
        atomic_write(path, commit.encode())


def _link_pointer(blob, pointer):
    """snapshots/<commit>/<filename> -> relative symlink to the blob; a copy if symlinks are not possible."""
    os.makedirs(os.path.dirname(pointer), exist_ok=True)
    if os.path.lexists(pointer):
        os.remove(pointer)
    try:
        os.symlink(os.path.relpath(blob, os.path.dirname(pointer)), pointer)
    except OSError:                                        # e.g. Windows without developer mode, some mounts
        tmp = f"{pointer}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            shutil.copyfile(blob, tmp)
            os.replace(tmp, pointer)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _set_cache_permissions(path):
    """Give a finished blob the mode a new file in its folder gets (huggingface_hub _chmod_and_move does the same;
    the temporary file was created private)."""
    probe = os.path.join(os.path.dirname(path), f"tmp_{uuid.uuid4().hex}")
    try:
        open(probe, "wb").close()
        os.chmod(path, os.stat(probe).st_mode & 0o7777)
    except OSError:
        pass
    finally:
        if os.path.exists(probe):
            os.unlink(probe)


# ---------------------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Let 3xx responses through as HTTPError, so that the HEAD can read the redirect's own headers."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_HEAD_OPENER = urllib.request.build_opener(_NoRedirect)
_GET_OPENER = urllib.request.build_opener()                 # follows redirects (the CDN may redirect again)


def _origin(url):
    p = urllib.parse.urlsplit(url)
    return p.scheme, p.hostname, p.port


def _request(url, method, token, send_token):
    req = urllib.request.Request(url, method=method)
    req.add_header("User-Agent", USER_AGENT)
    req.add_header("Accept-Encoding", "identity")          # no compression: sizes must be the file's
    if token and send_token:
        # Unredirected: urllib does not copy it to a redirected request, so the token never leaves the hub.
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    return req


def _normalize_etag(etag):
    """file_download._normalize_etag: strip a weak-validator prefix and the quotes."""
    if etag is None:
        return None
    return etag[2:].strip('"') if etag.startswith("W/") else etag.strip('"')


def _head(url, token):
    """HEAD the resolve URL; return (commit, etag, size or None, download URL). Raises urllib/OS errors."""
    timeout = _timeout("HF_HUB_ETAG_TIMEOUT")
    for _ in range(MAX_REDIRECTS):
        try:
            with _HEAD_OPENER.open(_request(url, "HEAD", token, True), timeout=timeout) as resp:
                headers, location = resp.headers, url
        except urllib.error.HTTPError as e:
            if e.code not in (301, 302, 303, 307, 308) or "Location" not in e.headers:
                raise
            headers, location = e.headers, urllib.parse.urljoin(url, e.headers["Location"])
            e.close()
            if _origin(location) == _origin(url):           # same host (renamed repo): follow
                url = location
                continue
        break
    else:
        raise RTDetrError(f"{url}: more than {MAX_REDIRECTS} redirects; check HF_ENDPOINT")
    commit = headers.get("X-Repo-Commit")
    etag = _normalize_etag(headers.get("X-Linked-Etag") or headers.get("ETag"))
    size = headers.get("X-Linked-Size") or (None if location != url else headers.get("Content-Length"))
    if not commit or not REGEX_COMMIT_HASH.fullmatch(commit) or not etag:
        raise RTDetrError(f"{url}: the answer has no X-Repo-Commit or ETag header, so it does not come from a "
                          f"Hugging Face hub; check HF_ENDPOINT and any proxy")
    if "/" in etag or etag in (".", ".."):
        raise RTDetrError(f"{url}: unusable ETag {etag!r}; check HF_ENDPOINT")
    return commit, etag, int(size) if size and size.isdigit() else None, location


def _download(url, blob, etag, expected_size, token, send_token, what, progress):
    """GET url into blob via a process-unique temporary file; verify size and sha256; never leave a partial blob."""
    tmp = f"{blob}.{uuid.uuid4().hex[:8]}.incomplete"
    digest = hashlib.sha256()
    done = 0
    try:
        with _GET_OPENER.open(_request(url, "GET", token, send_token),
                              timeout=_timeout("HF_HUB_DOWNLOAD_TIMEOUT")) as resp, open(tmp, "wb") as f:
            length = resp.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            total = expected_size if expected_size is not None else length
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        if length is not None and done != length:
            raise RTDetrError(f"{what}: download interrupted after {done} of {length} bytes; run again")
        if expected_size is not None and done != expected_size:
            raise RTDetrError(f"{what}: received {done} bytes, the hub announced {expected_size}; run again")
        if REGEX_SHA256.fullmatch(etag) and digest.hexdigest() != etag:
            raise RTDetrError(f"{what}: sha256 of the download is {digest.hexdigest()}, the hub says {etag}; "
                              f"the transfer was corrupted, run again")
        _set_cache_permissions(tmp)
        os.replace(tmp, blob)
    except (HTTPException, OSError) as e:                  # URLError, timeouts, resets, and a full disk are OSError
        raise RTDetrError(f"{what}: download into {os.path.dirname(blob)} failed after {done} bytes "
                          f"({_reason(e)}); check the network and the free space there, then run again") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _reason(error):
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


# ---------------------------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------------------------

def hf_hub_download(repo_id, filename, revision="main", cache_dir=None, progress=None):
    """Path of `filename` of model repo `repo_id` at `revision` in the hub cache, downloading it if needed.

    Like huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir); returns
    <cache>/models--ORG--NAME/snapshots/<commit>/<filename>. progress: optional callable(bytes_done, total or None)
    called while downloading. Raises RTDetrError (offline with nothing cached, not found, access denied, failed or
    corrupted transfer).
    """
    _check_names(repo_id, filename, revision)
    cache = cache_dir or hub_cache_dir()
    folder = repo_folder(repo_id, cache)
    what = f"{repo_id}/{filename}@{revision}"

    if REGEX_COMMIT_HASH.fullmatch(revision):                # a cached commit never changes: no request
        path = _cached_file(folder, revision, filename)
        if path:
            return path
    if is_offline():
        path = _cached_file(folder, revision, filename)
        if path:
            return path
        raise RTDetrError(f"{what}: not in the cache {cache} and HF_HUB_OFFLINE is set, so it was not downloaded; "
                          f"{HOW_TO_GET_WEIGHTS}")

    endpoint = hub_endpoint()
    url = (f"{endpoint}/{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/"
           f"{urllib.parse.quote(filename)}")
    token = os.environ.get("HF_TOKEN") or None
    try:
        commit, etag, size, location = _head(url, token)
    except (HTTPException, OSError, RTDetrError) as e:      # no network, HTTP error, not a hub: use the cache,
        path = _cached_file(folder, revision, filename)      # as huggingface_hub does
        if path:
            return path
        if isinstance(e, RTDetrError):
            raise
        if isinstance(e, urllib.error.HTTPError) and e.code in (401, 403):
            hint = "the repository may be private or gated: set HF_TOKEN to a token that has access"
        elif isinstance(e, urllib.error.HTTPError) and e.code == 404:
            hint = "check the repository id, the file name and the revision"
        else:
            hint = HOW_TO_GET_WEIGHTS
        raise RTDetrError(f"{what}: {url} failed ({_reason(e)}) and the file is not in the cache {cache}; "
                          f"{hint}") from None

    blob = os.path.join(folder, "blobs", etag)
    pointer = _pointer_path(folder, commit, filename)
    cached = os.path.exists(pointer)
    try:
        if not cached:
            os.makedirs(os.path.dirname(blob), exist_ok=True)
            if not os.path.exists(blob):
                send_token = _origin(location) == _origin(endpoint)
                _download(location, blob, etag, size, token, send_token, what, progress)
            _link_pointer(blob, pointer)
        _write_ref(folder, revision, commit)
    except OSError as e:
        if not cached:                                       # a read-only cache that has the file is fine
            raise RTDetrError(f"{what}: cannot write to the cache {cache} ({e}); set HF_HUB_CACHE to a writable "
                              f"folder") from None
    return pointer


def snapshot_model(repo_id, revision="main", cache_dir=None, progress=None):
    """Local folder holding config.json and model.safetensors of a model repo, downloaded into the hub cache if needed.

    Both files come from one commit: config.json is resolved at `revision`, model.safetensors at the commit that
    gave. Returns <cache>/models--ORG--NAME/snapshots/<commit>.
    """
    config = hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache_dir)
    commit = os.path.basename(os.path.dirname(config))
    weights = hf_hub_download(repo_id, "model.safetensors", revision=commit, cache_dir=cache_dir, progress=progress)
    return os.path.dirname(weights)
