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
    survive broken locks; older versions used blobs/<etag>.incomplete), held under an exclusive fcntl.flock while
    it is written; stop reading past the announced size (X-Linked-Size, else Content-Length, else at most
    MAX_UNANNOUNCED_BYTES); check the byte count, and the hash the etag names: sha256 when it is 64 hex digits (an
    LFS file), the git blob sha1 sha1(b"blob <length>\0" + content) when it is 40 (a small git file); then
    os.replace onto blobs/<etag>. On any failure the temporary file is deleted and nothing is left in blobs/.
    *.incomplete files of ours that no live process holds (their lock is free, or on Windows they can be deleted)
    and that were not written to for STALE_AFTER seconds are left-overs of killed downloads: removed.
 4. Write refs/<revision> (if the revision is not the commit hash itself) and the snapshot pointer, created under
    a temporary name and renamed into place (os.replace), so that processes doing the same at once do not collide.
If the HEAD fails (no network, HTTP error) the file is looked up in the cache through refs/<revision>, as
huggingface_hub does; only when it is not there is it an error. A full 40-hex commit hash as revision that is
already cached is returned without any request.

Nothing downloaded is trusted: only http and https URLs are requested or followed (a Location with file://,
ftp:// or data: is refused, and urllib's handlers for those schemes are not even installed); a cached file is
used only if it passes the checks that can be made cheaply each time (its size against the announced one when
online; the git blob sha1 of a small git file, named by its blob), and one that fails them is deleted (online: and
downloaded again) instead of being used. LFS files are hashed (sha256) when downloaded, not at each use.
"""

import hashlib
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.client import HTTPException

from .errors import RTDetrError
from .fileio import atomic_write

try:                                                  # POSIX; on Windows an open file cannot be deleted instead
    import fcntl
except ImportError:                                   # pragma: no cover (Windows)
    fcntl = None

DEFAULT_ENDPOINT = "https://huggingface.co"          # huggingface_hub constants._HF_DEFAULT_ENDPOINT
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}             # constants.ENV_VARS_TRUE_VALUES
DEFAULT_TIMEOUT = 10                                  # constants.DEFAULT_ETAG_TIMEOUT, DEFAULT_DOWNLOAD_TIMEOUT (s)
MAX_REDIRECTS = 10                                    # utils/_http.py _MAX_REDIRECTS
CHUNK = 1 << 20                                       # bytes per read while downloading
REGEX_COMMIT_HASH = re.compile(r"[0-9a-f]{40}")       # file_download.REGEX_COMMIT_HASH
REGEX_SHA256 = re.compile(r"[0-9a-f]{64}")            # an LFS etag is the file's sha256
REGEX_GIT_SHA1 = REGEX_COMMIT_HASH                    # a small git file's etag is its git blob sha1
REGEX_INCOMPLETE = re.compile(r"[^/\\]+\.[0-9a-f]{8}\.incomplete")   # ours: <etag>.<8 hex>.incomplete
MAX_UNANNOUNCED_BYTES = 100 << 20                     # a download without any size: the hub's git files are < 10 MB
STALE_AFTER = 60                                      # s without a write before an unlocked *.incomplete is stale
ALLOWED_SCHEMES = ("http", "https")
REGEX_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?")
USER_AGENT = f"rtdetrv2_np/0.1; python/{sys.version_info.major}.{sys.version_info.minor}"
HOW_TO_GET_WEIGHTS = ("run once with network access to fill the cache, or download model.safetensors and "
                      "config.json from the model page and pass their folder with --model; to try the tool "
                      "without network: python -m rtdetrv2_np.detect --demo")


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
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    if urllib.parse.urlsplit(endpoint).scheme.lower() not in ALLOWED_SCHEMES:
        raise RTDetrError(f"HF_ENDPOINT={endpoint[:100]!r} is not an http(s) URL; set it to e.g. "
                          f"{DEFAULT_ENDPOINT} or unset it")
    return endpoint


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
    if commit is None or not REGEX_COMMIT_HASH.fullmatch(commit):
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
    """snapshots/<commit>/<filename> -> relative symlink to the blob; a copy if symlinks are not possible.

    Made under a temporary name and renamed onto the pointer (os.replace is atomic), so that two processes
    linking the same file at once both succeed and leave one correct link (removing, then creating, raced).
    """
    os.makedirs(os.path.dirname(pointer), exist_ok=True)
    tmp = f"{pointer}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        try:
            os.symlink(os.path.relpath(blob, os.path.dirname(pointer)), tmp)
        except OSError:                                    # e.g. Windows without developer mode, some mounts
            shutil.copyfile(blob, tmp)
        os.replace(tmp, pointer)
    finally:
        if os.path.lexists(tmp):
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


def _verify(path, etag, size=None, full=True):
    """None if the file at `path` is what `etag` (and `size`, if known) say; else the reason, in words.

    size: compared with the file's size. The etag names a hash when it is 40 hex digits (git blob sha1 of a small
    git file: sha1(b"blob <length>\\0" + content), always checked) or 64 (sha256 of an LFS file: checked only when
    `full`, since it means reading the whole file).
    """
    try:
        length = os.path.getsize(path)
        if size is not None and length != size:
            return f"it has {length} bytes, the hub announced {size}"
        if REGEX_GIT_SHA1.fullmatch(etag):
            digest = hashlib.sha1(b"blob %d\0" % length)
        elif full and REGEX_SHA256.fullmatch(etag):
            digest = hashlib.sha256()
        else:
            return None
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    if digest.hexdigest() != etag:
        kind = "git blob sha1" if len(etag) == 40 else "sha256"
        return f"its {kind} is {digest.hexdigest()}, the hub says {etag}"
    return None


def _check_pointer(pointer):
    """None if a cached snapshot file passes the cheap checks of _verify against its blob's name (the etag); else
    the reason. A copied pointer (where symlinks fail) has no blob name and is not checked."""
    if not os.path.islink(pointer):
        return None
    return _verify(pointer, os.path.basename(os.readlink(pointer)), full=False)


def _discard(*paths):
    """Delete cache entries that failed verification (the pointer's blob too), ignoring what is already gone."""
    for path in paths:
        targets = [path]
        if os.path.islink(path):
            targets.insert(0, os.path.join(os.path.dirname(path), os.readlink(path)))
        for target in targets:
            try:
                os.unlink(target)
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------------------

def _check_scheme(url, what):
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise RTDetrError(f"{what}: the hub redirected to {url[:100]!r}, a {scheme or 'relative'} URL; only http and "
                          f"https are followed (check HF_ENDPOINT and any proxy)")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Let 3xx responses through as HTTPError, so that the HEAD can read the redirect's own headers."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _HttpOnlyRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects (the CDN may redirect again), but only to http and https URLs (urllib itself would also
    follow ftp://, and refuse others with a message about HTTP 302)."""

    def __init__(self, what):
        self.what = what

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("Location") or headers.get("URI")
        if location:
            _check_scheme(urllib.parse.urljoin(req.full_url, location), self.what)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(redirects):
    """An opener that speaks only HTTP(S): no file://, ftp:// or data: handler (build_opener would add them)."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(), redirects,
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


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


def _head(url, token, what):
    """HEAD the resolve URL; return (commit, etag, size or None, download URL). Raises urllib/OS errors."""
    timeout = _timeout("HF_HUB_ETAG_TIMEOUT")
    opener = _opener(_NoRedirect())
    for _ in range(MAX_REDIRECTS):
        try:
            with opener.open(_request(url, "HEAD", token, True), timeout=timeout) as resp:
                headers, location = resp.headers, url
        except urllib.error.HTTPError as e:
            if e.code not in (301, 302, 303, 307, 308) or "Location" not in e.headers:
                raise
            headers, location = e.headers, urllib.parse.urljoin(url, e.headers["Location"])
            e.close()
            _check_scheme(location, what)
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
    if not re.fullmatch(r"[A-Za-z0-9_.+=\-]{1,200}", etag) or etag in (".", ".."):
        raise RTDetrError(f"{url}: unusable ETag {etag[:80]!r}; check HF_ENDPOINT")
    return commit, etag, int(size) if size and size.isdigit() else None, location


def _lock(fd):
    """Hold an exclusive lock on an open file while this process writes it (POSIX flock; a no-op elsewhere, where
    an open file cannot be deleted anyway)."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)


def _held_by_a_live_process(path):
    """Whether another process holds the lock of one of our *.incomplete files (POSIX); elsewhere False (the
    deletion itself then fails if the file is open)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True                                        # gone or unreadable: leave it alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)                                       # releases the lock, if taken


def remove_stale_downloads(blobs):
    """Delete our *.incomplete files in `blobs` that no live process is writing (downloads that were killed).

    Stale: not written to for STALE_AFTER seconds (a download that has just created its file may not hold its lock
    yet) and its lock is free (POSIX) or, on Windows, it can be deleted (an open file cannot). Returns the names
    removed. huggingface_hub's own <etag>.incomplete files (resumable, locked elsewhere) are not touched.
    """
    removed = []
    try:
        names = os.listdir(blobs)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not REGEX_INCOMPLETE.fullmatch(name):
            continue
        path = os.path.join(blobs, name)
        try:
            if now - os.stat(path).st_mtime < STALE_AFTER or _held_by_a_live_process(path):
                continue
            os.unlink(path)
            removed.append(name)
        except OSError:
            pass
    return removed


def _download(url, blob, etag, expected_size, token, send_token, what, progress):
    """GET url into blob via a locked, process-unique temporary file; stop at the announced size; verify the size and
    the hash the etag names; never leave a partial blob."""
    remove_stale_downloads(os.path.dirname(blob))
    tmp = f"{blob}.{uuid.uuid4().hex[:8]}.incomplete"
    done = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        with os.fdopen(fd, "wb", buffering=0) as f:         # unbuffered: what is received is on disk
            _lock(fd)
            with _opener(_HttpOnlyRedirect(what)).open(_request(url, "GET", token, send_token),
                                                   timeout=_timeout("HF_HUB_DOWNLOAD_TIMEOUT")) as resp:
                length = resp.headers.get("Content-Length")
                length = int(length) if length and length.isdigit() else None
                if length is not None and expected_size is not None and length != expected_size:
                    raise RTDetrError(f"{what}: the download announces {length} bytes, the hub said {expected_size}; "
                                      f"run again")
                total = expected_size if expected_size is not None else length
                limit = total if total is not None else MAX_UNANNOUNCED_BYTES
                while True:
                    chunk = resp.read1(min(CHUNK, limit - done + 1))  # what has arrived; 1 byte more shows excess
                    if not chunk:
                        break
                    if done + len(chunk) > limit:
                        raise RTDetrError(f"{what}: the server sent more than the {limit} bytes "
                                          f"{'announced' if total is not None else 'allowed without a size'}; "
                                          f"stopped there, nothing kept; run again")
                    f.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
            f.flush()
            if total is not None and done != total:
                raise RTDetrError(f"{what}: download interrupted after {done} of {total} bytes; run again")
            problem = _verify(tmp, etag)
            if problem:
                raise RTDetrError(f"{what}: the download failed verification: {problem}; the transfer was corrupted, "
                                  f"run again")
            _set_cache_permissions(tmp)
            os.replace(tmp, blob)                           # still locked: the lock goes with the open file
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
        return str(error.reason)[:200]
    return f"{type(error).__name__}: {str(error)[:200]}" if str(error) else type(error).__name__


# ---------------------------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------------------------

def hf_hub_download(repo_id, filename, revision="main", cache_dir=None, progress=None, offline=None):
    """Path of `filename` of model repo `repo_id` at `revision` in the hub cache, downloading it if needed.

    Like huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir); returns
    <cache>/models--ORG--NAME/snapshots/<commit>/<filename>. progress: optional callable(bytes_done, total or None)
    called while downloading. Raises RTDetrError (offline with nothing cached, not found, access denied, failed or
    corrupted transfer, a damaged cached file while offline).
    """
    _check_names(repo_id, filename, revision)
    cache = cache_dir or hub_cache_dir()
    folder = repo_folder(repo_id, cache)
    what = f"{repo_id}/{filename}@{revision}"
    env_offline = is_offline()
    offline = env_offline if offline is None else offline      # True: cache only (as HF_HUB_OFFLINE=1)
    why_offline = "HF_HUB_OFFLINE is set" if env_offline else "only the cache was to be used"

    def from_cache(why_not_online):
        """The cached file, checked; None if there is none; RTDetrError if it is damaged (then deleted)."""
        path = _cached_file(folder, revision, filename)
        problem = path and _check_pointer(path)
        if problem:
            _discard(path)
            raise RTDetrError(f"{what}: the cached file {path} failed verification ({problem}), so it was deleted; "
                              f"{why_not_online}, run again with network access to download it again")
        return path

    if REGEX_COMMIT_HASH.fullmatch(revision) and not offline:         # a cached commit never changes: no request
        path = _cached_file(folder, revision, filename)
        if path and not _check_pointer(path):
            return path                                      # (a damaged one is replaced by the download below)
    if offline:
        path = from_cache(why_offline)
        if path:
            return path
        raise RTDetrError(f"{what}: not in the cache {cache} and {why_offline}, so it was not downloaded; "
                          f"{HOW_TO_GET_WEIGHTS}")

    endpoint = hub_endpoint()
    url = (f"{endpoint}/{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/"
           f"{urllib.parse.quote(filename)}")
    token = os.environ.get("HF_TOKEN") or None
    try:
        commit, etag, size, location = _head(url, token, what)
    except (HTTPException, OSError, RTDetrError) as e:      # no network, HTTP error, not a hub: use the cache,
        path = from_cache("the hub could not be reached")   # as huggingface_hub does
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
    if cached and _verify(pointer, etag, size, full=False):
        _discard(pointer)                                    # damaged: download again
        cached = False
    try:
        if not cached:
            os.makedirs(os.path.dirname(blob), exist_ok=True)
            if os.path.exists(blob) and _verify(blob, etag, size, full=False):
                _discard(blob)
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


def snapshot_model(repo_id, revision="main", cache_dir=None, progress=None, offline=None):
    """Local folder holding config.json and model.safetensors of a model repo, downloaded into the hub cache if needed.

    Both files come from one commit: config.json is resolved at `revision`, model.safetensors at the commit that
    gave. Returns <cache>/models--ORG--NAME/snapshots/<commit>.
    """
    config = hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache_dir, offline=offline)
    commit = os.path.basename(os.path.dirname(config))
    weights = hf_hub_download(repo_id, "model.safetensors", revision=commit, cache_dir=cache_dir, progress=progress,
                              offline=offline)
    return os.path.dirname(weights)
