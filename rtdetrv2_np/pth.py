"""Read the official RT-DETR `.pth` checkpoints (lyuwenyu/RT-DETR) into NumPy, without torch and without running
arbitrary pickled code.

Reproduces what `torch.load(path, map_location="cpu")` (torch/serialization.py::_load, torch/_utils.py::
_rebuild_tensor_v2, _rebuild_parameter) yields for the tensors of a checkpoint, followed by the state-dict choice of
the official deploy script (rtdetrv2_pytorch/references/deploy/rtdetrv2_torch.py: `checkpoint["ema"]["module"]` if
there is "ema", else `checkpoint["model"]`).

The file format (torch >= 1.6 `torch.save`, "zip" serialization): a ZIP archive whose entries sit under one folder
<prefix>/ (the file's stem, or "archive"):
    <prefix>/data.pkl        a pickle (protocol 2) of the saved object; every tensor storage in it is a
                             "persistent id" ('storage', <torch.XStorage class>, key, location, numel)
    <prefix>/data/<key>      the raw bytes of storage <key>: numel elements of the storage's dtype
    <prefix>/byteorder       b"little" or b"big" (absent in old files: little, as torch assumes)
    <prefix>/version, .format_version, .storage_alignment, .data/serialization_id   (not needed to read tensors)
A tensor is pickled as torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
backward_hooks[, metadata]); offset and strides count elements, so a tensor is `as_strided` over its storage, and
views of one storage (transposes, slices, expands) share it.

Safety: unpickling runs the callables a pickle names. `_Unpickler.find_class` hands out only stand-ins for the
globals needed to rebuild tensors and plain containers (table ALLOWED below); any other global (os.system,
builtins.eval, subprocess, ...) stops the load with an RTDetrError naming it, before anything is called.

Laziness: tensors are rebuilt as references; only the chosen state dict's tensors are read from the archive, so the
optimizer and scheduler states in a full training checkpoint cost nothing.

Dtypes: float32, float16, float64, int64, int32, int16, int8, uint8, bool as themselves; bfloat16 widened to float32
exactly (NumPy has no bfloat16).
"""

import _compat_pickle
import collections
import os
import pickle
import zipfile

import numpy as np

from .errors import RTDetrError

# torch storage class name -> NumPy dtype of its elements (torch/storage.py _LegacyStorage subclasses).
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_, "BFloat16Storage": "bfloat16",
    "UntypedStorage": np.uint8,                        # torch.load reads an untyped storage as bytes (uint8)
}


class _StorageType:
    """Stand-in for a torch storage class in a persistent id: only its element dtype matters."""
    __slots__ = ("name", "dtype")                      # no __dict__: a pickle cannot BUILD attributes onto it

    def __init__(self, name):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """A storage of the archive, not yet read: data/<key>, `numel` elements of `dtype`."""
    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel


class _LazyTensor:
    """A tensor as _rebuild_tensor_v2 describes it, read from its storage on demand."""
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(n) for n in size), tuple(int(s) for s in stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """torch._utils._rebuild_tensor_v2 without torch: remember where the tensor lives."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 called on something that is not a storage")
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """torch._utils._rebuild_parameter(_with_state): a Parameter is its tensor here."""
    return data


def _codecs_encode(text, encoding="utf-8"):
    """_codecs.encode as protocol-2 pickles use it for bytes objects: only latin1, the encoding pickle writes."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# (module, name) -> what the unpickler gets instead. Anything else is refused.
ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,  # state dicts, empty backward_hooks
    ("collections", "Counter"): collections.Counter,          # MultiStepLR milestones in full training checkpoints
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,   # protocol 2 pickles sets by REDUCE
    ("_codecs", "encode"): _codecs_encode,                    # protocol 2 pickles bytes as _codecs.encode(s, latin1)
}
ALLOWED.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})
ALLOWED[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage")


class _Unpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the ALLOWED globals and the archive's storages."""

    def __init__(self, file, path, records):
        super().__init__(file, encoding="utf-8")
        self.path, self.records, self.storages = path, records, {}

    def find_class(self, module, name):
        # Python 2 names in protocol-2 pickles (__builtin__ -> builtins, ...), as pickle's own find_class maps them.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise RTDetrError(f"{self.path}: refused to load: the pickle calls for {module}.{name}, which a "
                              f"checkpoint of tensors never needs (the file may be malicious); use only checkpoints "
                              f"from a source you trust, e.g. the official release") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise RTDetrError(f"{self.path}: unexpected persistent id {str(pid)[:80]!r} in data.pkl; this is not a "
                              f"torch.save checkpoint this reader understands")
        _, storage_type, key, _location, numel = pid
        key = str(key)
        if key not in self.storages:
            if key not in self.records:
                raise RTDetrError(f"{self.path}: storage data/{key} is missing from the archive; the file is "
                                  f"damaged, download it again")
            self.storages[key] = _Storage(key, storage_type.dtype, int(numel))
        return self.storages[key]


def _read_storage(archive, prefix, storage, little_endian, path):
    """The storage's elements as a 1-D NumPy array [numel]."""
    raw = archive.read(f"{prefix}data/{storage.key}")
    if storage.dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype="<u2" if little_endian else ">u2")                # [numel]
        array = (bits.astype(np.uint32) << 16).view(np.float32)                          # exact widening
    else:
        dtype = np.dtype(storage.dtype).newbyteorder("<" if little_endian else ">")
        if len(raw) % dtype.itemsize:
            raise RTDetrError(f"{path}: storage data/{storage.key} has {len(raw)} bytes, not a whole number of "
                              f"{dtype.name} elements; the file is damaged, download it again")
        array = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)  # [numel]
    return array


def _materialise(lazy, archive, prefix, little_endian, path, cache, name):
    """as_strided(storage, size, stride, offset), copied to a fresh C-contiguous array."""
    storage = cache.get(lazy.storage.key)
    if storage is None:
        storage = cache[lazy.storage.key] = _read_storage(archive, prefix, lazy.storage, little_endian, path)
    size, stride, offset = lazy.size, lazy.stride, lazy.offset
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise RTDetrError(f"{path}: tensor {name} has an invalid layout (size {size}, stride {stride}, offset "
                          f"{offset}); the file is damaged")
    if 0 in size:
        return np.empty(size, dtype=storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))          # highest element index touched
    if last >= len(storage):
        raise RTDetrError(f"{path}: tensor {name} reaches element {last} of a storage of {len(storage)}; the file "
                          f"is damaged or truncated, download it again")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(s * item for s in stride))   # [*size]
    return np.array(view, copy=True, order="C")


def _pick_state_dict(checkpoint, path):
    """ckpt["ema"]["module"], else ckpt["model"], else the checkpoint itself if it maps names to tensors."""
    if isinstance(checkpoint, dict):
        ema = checkpoint.get("ema")
        if isinstance(ema, dict) and isinstance(ema.get("module"), dict):
            return ema["module"]
        if isinstance(checkpoint.get("model"), dict):
            return checkpoint["model"]
        if checkpoint and all(isinstance(k, str) and isinstance(v, _LazyTensor) for k, v in checkpoint.items()):
            return checkpoint
        keys = ", ".join(map(repr, list(checkpoint)[:8]))
        raise RTDetrError(f"{path}: no state dict found (top-level keys {keys}); expected 'ema' -> 'module', "
                          f"'model', or a dict of tensors as torch.save(model.state_dict()) writes")
    raise RTDetrError(f"{path}: the checkpoint is a {type(checkpoint).__name__}, not a dict; expected a state "
                      f"dict or an RT-DETR training checkpoint")


def load_pth(path):
    """Read a torch.save checkpoint without torch; return its state dict as {name: np.ndarray}.

    path: an official RT-DETR .pth ({"ema": {"module": sd}, ...} or {"model": sd, ...}) or any file written by
    torch.save(state_dict). Arrays keep the tensors' shapes and dtypes (bfloat16 -> float32), C-contiguous, in the
    file's key order. Raises RTDetrError for a missing, damaged, legacy-format or refused (unsafe) file.
    """
    name = os.fspath(path)
    try:
        archive = zipfile.ZipFile(name)
    except FileNotFoundError:
        raise RTDetrError(f"{name}: no such file; check the path") from None
    except IsADirectoryError:
        raise RTDetrError(f"{name}: is a directory; pass the .pth file") from None
    except zipfile.BadZipFile:
        raise RTDetrError(f"{name}: not a zip-format torch checkpoint (a legacy torch < 1.6 file, or not a "
                          f"checkpoint at all); re-save it with torch.save from torch >= 1.6, or use safetensors"
                          ) from None
    except OSError as e:
        raise RTDetrError(f"{name}: cannot read ({e.strerror or e}); check the file") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise RTDetrError(f"{name}: a torch checkpoint has one <folder>/data.pkl, this zip has {len(pickles)}; "
                              f"it is not a torch.save file")
        prefix = pickles[0][: -len("data.pkl")]                                   # "<stem>/"
        records = {n[len(prefix) + len("data/"):] for n in archive.namelist() if n.startswith(prefix + "data/")}
        byteorder = b"little"                                                     # torch's default when absent
        if prefix + "byteorder" in archive.namelist():
            byteorder = archive.read(prefix + "byteorder").strip()
            if byteorder not in (b"little", b"big"):
                raise RTDetrError(f"{name}: unknown byteorder record {byteorder[:20]!r}; the file is damaged")
        try:
            with archive.open(pickles[0]) as f:
                checkpoint = _Unpickler(f, name, records).load()
        except RTDetrError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                zipfile.BadZipFile, OSError) as e:
            raise RTDetrError(f"{name}: data.pkl cannot be read ({type(e).__name__}: {e}); the file is damaged or "
                              f"not a checkpoint, download it again") from None
        state = _pick_state_dict(checkpoint, name)
        cache, out = {}, {}
        try:
            for key, value in state.items():
                if not isinstance(value, _LazyTensor):
                    raise RTDetrError(f"{name}: state dict entry {key!r} is a {type(value).__name__}, not a tensor; "
                                      f"this reader expects a plain state dict of tensors")
                out[str(key)] = _materialise(value, archive, prefix, byteorder == b"little", name, cache, key)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise RTDetrError(f"{name}: a tensor storage cannot be read ({type(e).__name__}: {e}); the file is "
                              f"damaged or truncated, download it again") from None
    return out
