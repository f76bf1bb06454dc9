"""Check that rtdetrv2_np.hub and huggingface_hub share one cache, against the local fake hub of the tests.

Run with the reference environment (it has huggingface_hub), from the repository root:

    venv-ref/bin/python tools/check_hub_interop.py

It starts tests/fake_hub.py on 127.0.0.1 (no internet), then
  1. downloads config.json and model.safetensors with huggingface_hub.hf_hub_download into cache A and with
     rtdetrv2_np.hub into cache B, and compares the two trees (paths, symlink targets, refs contents);
  2. finds each cache's files with the other library offline (huggingface_hub local_files_only=True,
     rtdetrv2_np with HF_HUB_OFFLINE=1);
  3. checks that huggingface_hub accepts the fake hub's answers, i.e. that the fake models the real protocol.
Prints OK / NOT OK per check and exits non-zero on a failure. The package never imports this file.
"""

import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from fake_hub import REPO, FakeHub  # noqa: E402

FILES = ["config.json", "model.safetensors", "sub/dir/notes.txt"]
REVISIONS = ["main", "v1.0", "refs/pr/1"]


def tree(cache):
    """{relative path: symlink target, or file size, or ref contents}, without huggingface_hub's lock files."""
    out = {}
    for d, dirs, files in os.walk(cache):
        for name in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            path = os.path.join(d, name)
            rel = os.path.relpath(path, cache)
            if rel.startswith(".locks") or name == "CACHEDIR.TAG":
                continue
            if os.path.islink(path):
                out[rel] = "-> " + os.readlink(path)
            elif f"{os.sep}refs{os.sep}" in path:
                out[rel] = "ref " + open(path).read()
            else:
                out[rel] = f"{os.path.getsize(path)} bytes"
    return out


def main():
    fake = FakeHub()
    os.environ["HF_ENDPOINT"] = fake.endpoint
    os.environ.pop("HF_HUB_OFFLINE", None)
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    import huggingface_hub                                               # reads HF_ENDPOINT at import

    from rtdetrv2_np import hub

    failures = 0

    def check(ok, what):
        nonlocal failures
        failures += not ok
        print(("OK     " if ok else "NOT OK ") + what)

    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        for rev in REVISIONS:
            for name in FILES:
                pa = huggingface_hub.hf_hub_download(REPO, name, revision=rev, cache_dir=a)
                pb = hub.hf_hub_download(REPO, name, revision=rev, cache_dir=b)
                check(os.path.relpath(pa, a) == os.path.relpath(pb, b) and
                      open(pa, "rb").read() == open(pb, "rb").read(), f"same path and bytes: {name}@{rev}")
        ta, tb = tree(a), tree(b)
        check(ta == tb, f"identical cache trees ({len(ta)} entries)")
        for k in sorted(set(ta) | set(tb)):
            if ta.get(k) != tb.get(k):
                print(f"    {k}: huggingface_hub {ta.get(k)!r}, rtdetrv2_np {tb.get(k)!r}")

        fake.close()                                                     # from here on, offline only
        os.environ["HF_HUB_OFFLINE"] = "1"
        for rev in REVISIONS:
            for name in FILES:
                pa = hub.hf_hub_download(REPO, name, revision=rev, cache_dir=a)
                pb = huggingface_hub.hf_hub_download(REPO, name, revision=rev, cache_dir=b, local_files_only=True)
                check(pa.startswith(a) and pb.startswith(b), f"each finds the other's {name}@{rev} offline")
        d = hub.snapshot_model(REPO, cache_dir=a)
        check(sorted(os.listdir(d)) == ["config.json", "model.safetensors", "sub"], "snapshot_model on hf's cache")
    print("huggingface_hub", huggingface_hub.__version__, "-", "all OK" if not failures else f"{failures} NOT OK")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
