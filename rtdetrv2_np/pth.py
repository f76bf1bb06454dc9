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

Safety: a pickle is a program; `pickle.load` runs the callables it names. This module does not use pickle.load:
`_PickleReader` interprets the opcodes itself (those torch.save writes, protocols 2 to 4) and
  * resolves only the globals of table ALLOWED, each to a stand-in written here (never the real class or function
    object, so that nothing a file does can change shared state); any other global (os.system, builtins.eval,
    subprocess, ...) stops the load with an RTDetrError naming it, before anything is called;
  * refuses BUILD with a state (setting attributes or items on an object), INST, OBJ, NEWOBJ, extension codes and
    out-of-band buffers: no checkpoint of tensors needs them;
  * appends and sets items only on lists, dicts and sets it created itself;
  * bounds what could exhaust time or memory from a small file: the pickle's size (MAX_PICKLE_BYTES), integer
    sizes (MAX_INT_BYTES), the size of a tuple or frozenset counted with every repeated (memo-reused) part
    (MAX_KEY_NODES: hashing and comparing one is that much work, done recursively in C), nesting (MAX_NESTING);
  * builds error messages from short representations (reprlib), never from the whole of an object.
Before any tensor is read: each tensor's layout must lie inside its storage; each storage's zip entry must declare
exactly the bytes the storage holds; the bytes to read may not exceed MAX_INFLATION times the file's size (a zip
bomb: a small compressed entry that declares gigabytes); and the tensors together may not hold more than
MAX_EXPANDED_BYTES beyond the storages they view (a stride-0 or overlapping view of a small storage that claims a
huge shape). So memory use is bounded by a small multiple of the file's size.

Laziness: tensors are rebuilt as references; only the chosen state dict's tensors are read from the archive, so the
optimizer and scheduler states in a full training checkpoint cost nothing.

Dtypes: float32, float16, float64, int64, int32, int16, int8, uint8, bool as themselves; bfloat16 widened to float32
exactly (NumPy has no bfloat16; a bfloat16 number is the top 16 bits of the float32 with the same value).
"""

import _compat_pickle
import collections
import os
import reprlib
import struct
import zipfile

import numpy as np

from .errors import RTDetrError
from .fileio import open_regular

# Limits (each far above what a real checkpoint needs, far below what hurts):
MAX_PICKLE_BYTES = 64 << 20     # data.pkl: ~150 bytes per tensor reference; a full official training checkpoint
                                # (model, ema, optimizer states: ~4000 tensors) is under 1 MB
MAX_INT_BYTES = 64              # LONG1/LONG4 integers: torch writes sizes, offsets and counts below 2**63 (8 bytes)
MAX_KEY_NODES = 10_000          # parts of a tuple/frozenset with repeats; real keys are strings or ints (1 part)
MAX_NESTING = 1_000             # tuple/frozenset depth and MARK depth; real checkpoints nest < 10 deep
MAX_NDIM = 64                   # dimensions of a tensor (torch's own limit for most operators is 25)
MAX_INFLATION = 10              # bytes read / file size: torch.save stores entries uncompressed (ratio <= 1)
MAX_EXPANDED_BYTES = 64 << 20   # tensor bytes beyond the bytes of the storages they view (stride 0, overlaps)

# torch storage class name -> NumPy dtype of its elements (torch/storage.py _LegacyStorage subclasses).
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_, "BFloat16Storage": "bfloat16",
    "UntypedStorage": np.uint8,                        # torch.load reads an untyped storage as bytes (uint8)
}

_short_repr = reprlib.Repr()                           # error messages: bounded size, whatever the object
_short_repr.maxlevel, _short_repr.maxstring, _short_repr.maxother, _short_repr.maxlong = 3, 40, 40, 40
for _attr in ("maxtuple", "maxlist", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_short_repr, _attr, 4)


def short(obj):
    """repr(obj), at most ~100 characters, in time independent of obj's size."""
    text = _short_repr.repr(obj)
    return text if len(text) <= 100 else text[:97] + "..."


def _itemsize(dtype):
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


class _StorageType:
    """Stand-in for a torch storage class in a persistent id: only its element dtype matters."""
    __slots__ = ("name", "dtype")                      # no __dict__; and BUILD is refused anyway

    def __init__(self, name):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """A storage of the archive, not yet read: data/<key>, `numel` elements of `dtype`."""
    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel

    @property
    def nbytes(self):
        return self.numel * _itemsize(self.dtype)


class _LazyTensor:
    """A tensor as _rebuild_tensor_v2 describes it, read from its storage on demand."""
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _Refused(Exception):
    """A pickle this reader will not interpret; the message says why (becomes an RTDetrError naming the file)."""


def _int(value, what, low=0, high=1 << 62):
    if type(value) is bool or not isinstance(value, int) or not low <= value <= high:
        raise _Refused(f"{what} is {short(value)}, not an integer in {low}..{high}")
    return value


def _ints(values, what):
    if not isinstance(values, (tuple, list)) or len(values) > MAX_NDIM:
        raise _Refused(f"{what} is {short(values)}, not a tuple of at most {MAX_NDIM} integers")
    return tuple(_int(v, what) for v in values)


# ---------------------------------------------------------------------------------------------------------------
# The allowed globals: what each becomes when a pickle names it. Each handler gets (reader, args) from REDUCE.
# ---------------------------------------------------------------------------------------------------------------

def _rebuild_tensor_v2(reader, args):
    """torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks
    [, metadata]) without torch: remember where the tensor lives."""
    if len(args) not in (6, 7) or not isinstance(args[0], _Storage):
        raise _Refused(f"_rebuild_tensor_v2 called with {short(args)}, not (storage, offset, size, stride, ...)")
    size, stride = _ints(args[2], "a tensor size"), _ints(args[3], "a tensor stride")
    if len(size) != len(stride):
        raise _Refused(f"a tensor has size {short(size)} but stride {short(stride)}")
    return _LazyTensor(args[0], _int(args[1], "a storage offset"), size, stride)


def _rebuild_parameter(reader, args):
    """torch._utils._rebuild_parameter(data, requires_grad, backward_hooks[, state]): a Parameter is its tensor."""
    if len(args) not in (3, 4) or not isinstance(args[0], _LazyTensor):
        raise _Refused(f"_rebuild_parameter called with {short(args)}, not (tensor, requires_grad, hooks)")
    return args[0]


def _mapping(reader, args, cls):
    """collections.OrderedDict / Counter (their __reduce__ passes () or one dict or list of pairs): a new one."""
    out = cls()
    if len(args) > 1:
        raise _Refused(f"{cls.__name__} called with {len(args)} arguments")
    if args:
        items = args[0].items() if isinstance(args[0], dict) else args[0]
        if not isinstance(args[0], (dict, list, tuple)):
            raise _Refused(f"{cls.__name__} called with {short(args[0])}")
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise _Refused(f"{cls.__name__} item {short(item)} is not a (key, value) pair")
            out[reader.key(item[0])] = item[1]
    return out


def _set(reader, args, cls):
    """builtins.set / frozenset (protocol 2 pickles sets as set([items])): a new one."""
    if len(args) > 1 or (args and not isinstance(args[0], (list, tuple))):
        raise _Refused(f"{cls.__name__} called with {short(args)}")
    items = [reader.key(item) for item in (args[0] if args else ())]
    return reader.hashable(cls(items), items) if cls is frozenset else cls(items)


def _codecs_encode(reader, args):
    """_codecs.encode as protocol-2 pickles use it for bytes objects: only latin1, the encoding pickle writes."""
    if len(args) not in (1, 2) or not isinstance(args[0], str) or \
            (len(args) == 2 and args[1] not in ("latin1", "latin-1")):
        raise _Refused(f"_codecs.encode called with {short(args)}")
    try:
        return args[0].encode("latin1")
    except UnicodeEncodeError:
        raise _Refused("_codecs.encode of text that is not latin1") from None


class _Global:
    """A stand-in for an allowed global: only REDUCE can use it, through its handler."""
    __slots__ = ("name", "handler")

    def __init__(self, name, handler):
        self.name, self.handler = name, handler

    def __repr__(self):
        return f"<{self.name}>"


# (module, name) -> what the reader uses instead. Anything else is refused.
ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _Global("_rebuild_tensor_v2", _rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Global("_rebuild_parameter", _rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Global("_rebuild_parameter_with_state", _rebuild_parameter),
    # state dicts, empty backward_hooks
    ("collections", "OrderedDict"): _Global("OrderedDict", lambda r, a: _mapping(r, a, collections.OrderedDict)),
    # MultiStepLR milestones in full training checkpoints
    ("collections", "Counter"): _Global("Counter", lambda r, a: _mapping(r, a, collections.Counter)),
    ("builtins", "set"): _Global("set", lambda r, a: _set(r, a, set)),       # protocol 2 pickles sets by REDUCE
    ("builtins", "frozenset"): _Global("frozenset", lambda r, a: _set(r, a, frozenset)),
    ("_codecs", "encode"): _Global("encode", _codecs_encode),                 # protocol 2: bytes as encode(s, latin1)
}
ALLOWED.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})
ALLOWED[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage")


# ---------------------------------------------------------------------------------------------------------------
# The pickle interpreter
# ---------------------------------------------------------------------------------------------------------------

_MARK = object()                                       # what MARK pushes: everything above it is one group


class _PickleReader:
    """Interprets a pickle's opcodes (Python's Lib/pickle.py::_Unpickler, restricted; see the module docstring).

    data: the pickle's bytes. path: for messages. records: {storage key: ZipInfo} of the archive's data/ entries.
    """

    def __init__(self, data, path, records):
        self.data, self.pos, self.path, self.records = data, 0, path, records
        self.stack, self.marks, self.memo, self.storages = [], [], {}, {}
        self.sizes = {}             # id(tuple or frozenset) -> (it, parts counted with repeats, depth)
        self.ops = {code[0]: getattr(self, "op_" + name) for code, name in _OPCODES.items()}

    # -- reading the byte stream --------------------------------------------------------------------------------
    def take(self, n):
        start, end = self.pos, self.pos + n
        if n < 0 or end > len(self.data):
            raise _Refused("the pickle ends in the middle of an instruction (truncated)")
        self.pos = end
        return self.data[start:end]

    def byte(self):
        if self.pos >= len(self.data):
            raise _Refused("the pickle ends in the middle of an instruction (truncated)")
        self.pos += 1
        return self.data[self.pos - 1]

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def line(self):
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise _Refused("the pickle ends in the middle of an instruction (truncated)")
        text = self.data[self.pos:end]
        self.pos = end + 1
        return text.decode("ascii", "strict")

    # -- stack helpers ------------------------------------------------------------------------------------------
    def pop(self):
        if not self.stack:
            raise _Refused("the pickle pops from an empty stack")
        return self.stack.pop()

    def top(self):
        if not self.stack:
            raise _Refused("the pickle uses an empty stack")
        return self.stack[-1]

    def pop_mark(self):
        if not self.marks:
            raise _Refused("the pickle closes a group it never opened (no MARK)")
        items, self.stack = self.stack, self.marks.pop()
        return items

    def hashable(self, obj, parts):
        """Register a new tuple or frozenset: its size counted with repeated parts, and its depth."""
        size, depth = 1, 1
        for part in parts:
            known = self.sizes.get(id(part)) if isinstance(part, (tuple, frozenset)) else None
            if known is not None:
                size, depth = size + known[1], max(depth, known[2] + 1)
            else:
                size += 1
            size = min(size, MAX_KEY_NODES + 1)           # a number, not a bignum, even for 2**1000 repeats
        if depth > MAX_NESTING:
            raise _Refused(f"tuples nested more than {MAX_NESTING} deep")
        self.sizes[id(obj)] = (obj, size, depth)
        return obj

    def key(self, obj):
        """obj, if hashing it (as a dict key or set item) is cheap; else refused."""
        if isinstance(obj, (tuple, frozenset)):
            known = self.sizes.get(id(obj))
            if known is None or known[1] > MAX_KEY_NODES:
                raise _Refused(f"a dict key or set item of more than {MAX_KEY_NODES} parts (with repeats)")
        elif not isinstance(obj, (str, bytes, int, float, type(None), _StorageType, _Global)):
            raise _Refused(f"a dict key or set item is a {type(obj).__name__}")
        try:
            hash(obj)
        except TypeError:
            raise _Refused(f"a dict key or set item {short(obj)} is unhashable") from None
        return obj

    # -- the main loop ------------------------------------------------------------------------------------------
    def load(self):
        ops, data = self.ops, self.data
        while True:
            if self.pos >= len(data):
                raise _Refused("the pickle ends without STOP (truncated)")
            code = data[self.pos]
            self.pos += 1
            op = ops.get(code)
            if op is None:
                name = _REFUSED.get(bytes([code]))
                raise _Refused(f"pickle instruction {name or bytes([code])!r} at byte {self.pos - 1}, which a "
                               f"torch.save checkpoint of tensors never contains"
                               + ("" if name else " (not a pickle?)"))
            if op():                                       # STOP returns True
                return self.pop()

    # -- opcodes ------------------------------------------------------------------------------------------------
    def op_PROTO(self):
        if self.byte() > 5:
            raise _Refused("pickle protocol above 5")

    def op_FRAME(self):
        self.unpack("<Q")                                  # framing is only a read-ahead hint

    def op_STOP(self):
        return True

    def op_MARK(self):
        if len(self.marks) >= MAX_NESTING:
            raise _Refused(f"groups (MARK) nested more than {MAX_NESTING} deep")
        self.marks.append(self.stack)
        self.stack = []

    def op_POP(self):
        self.pop()

    def op_POP_MARK(self):
        self.pop_mark()

    def op_DUP(self):
        self.stack.append(self.top())

    def op_NONE(self):
        self.stack.append(None)

    def op_NEWTRUE(self):
        self.stack.append(True)

    def op_NEWFALSE(self):
        self.stack.append(False)

    def op_BININT(self):
        self.stack.append(self.unpack("<i"))

    def op_BININT1(self):
        self.stack.append(self.byte())

    def op_BININT2(self):
        self.stack.append(self.unpack("<H"))

    def _long(self, n):
        if n > MAX_INT_BYTES:
            raise _Refused(f"an integer of {n} bytes (at most {MAX_INT_BYTES})")
        self.stack.append(int.from_bytes(self.take(n), "little", signed=True))

    def op_LONG1(self):
        self._long(self.byte())

    def op_LONG4(self):
        self._long(self.unpack("<i"))

    def op_BINFLOAT(self):
        self.stack.append(self.unpack(">d"))

    def _text(self, n):
        try:
            self.stack.append(self.take(n).decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError:
            raise _Refused("a string that is not UTF-8") from None

    def op_SHORT_BINUNICODE(self):
        self._text(self.byte())

    def op_BINUNICODE(self):
        self._text(self.unpack("<I"))

    def op_BINUNICODE8(self):
        self._text(self.unpack("<Q"))

    def op_SHORT_BINSTRING(self):                          # Python 2 str: decoded as UTF-8 (torch.load's default)
        self._text(self.byte())

    def op_BINSTRING(self):
        self._text(self.unpack("<i"))

    def op_SHORT_BINBYTES(self):
        self.stack.append(bytes(self.take(self.byte())))

    def op_BINBYTES(self):
        self.stack.append(bytes(self.take(self.unpack("<I"))))

    def op_BINBYTES8(self):
        self.stack.append(bytes(self.take(self.unpack("<Q"))))

    def op_EMPTY_LIST(self):
        self.stack.append([])

    def op_EMPTY_DICT(self):
        self.stack.append({})

    def op_EMPTY_SET(self):
        self.stack.append(set())

    def op_EMPTY_TUPLE(self):
        self.stack.append(self.hashable((), ()))

    def _tuple(self, items):
        self.stack.append(self.hashable(tuple(items), items))

    def op_TUPLE(self):
        self._tuple(self.pop_mark())

    def op_TUPLE1(self):
        self._tuple([self.pop()])

    def op_TUPLE2(self):
        b, a = self.pop(), self.pop()
        self._tuple([a, b])

    def op_TUPLE3(self):
        c, b, a = self.pop(), self.pop(), self.pop()
        self._tuple([a, b, c])

    def op_LIST(self):
        self.stack.append(self.pop_mark())

    def op_DICT(self):
        items = self.pop_mark()
        self.stack.append(self._setitems({}, items))

    def op_FROZENSET(self):
        items = [self.key(item) for item in self.pop_mark()]
        self.stack.append(self.hashable(frozenset(items), items))

    def _target(self, kind):
        target = self.top()
        if not isinstance(target, kind):
            raise _Refused(f"the pickle adds items to a {type(target).__name__}, not a {kind.__name__}")
        return target

    def op_APPEND(self):
        value = self.pop()
        self._target(list).append(value)

    def op_APPENDS(self):
        items = self.pop_mark()
        self._target(list).extend(items)

    def _setitems(self, target, items):
        if len(items) % 2:
            raise _Refused("SETITEMS with an odd number of items")
        for i in range(0, len(items), 2):
            target[self.key(items[i])] = items[i + 1]
        return target

    def op_SETITEM(self):
        value, key = self.pop(), self.pop()
        self._setitems(self._target(dict), [key, value])

    def op_SETITEMS(self):
        items = self.pop_mark()
        self._setitems(self._target(dict), items)

    def op_ADDITEMS(self):
        items = self.pop_mark()
        self._target(set).update(self.key(item) for item in items)

    def _memo_put(self, index):
        if index in self.memo and self.memo[index] is not self.top():
            raise _Refused(f"the pickle overwrites memo entry {index}")
        self.memo[index] = self.top()

    def op_BINPUT(self):
        self._memo_put(self.byte())

    def op_LONG_BINPUT(self):
        self._memo_put(self.unpack("<I"))

    def op_MEMOIZE(self):
        self._memo_put(len(self.memo))

    def _memo_get(self, index):
        if index not in self.memo:
            raise _Refused(f"the pickle refers to memo entry {index}, which it never stored")
        self.stack.append(self.memo[index])

    def op_BINGET(self):
        self._memo_get(self.byte())

    def op_LONG_BINGET(self):
        self._memo_get(self.unpack("<I"))

    def _global(self, module, name):
        # Python 2 names in protocol-2 pickles (__builtin__ -> builtins, ...), as pickle's own find_class maps them.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            self.stack.append(ALLOWED[(module, name)])
        except (KeyError, TypeError):
            raise RTDetrError(f"{self.path}: refused to load: the pickle calls for {short(module)[1:-1]}."
                              f"{short(name)[1:-1]}, which a checkpoint of tensors never needs (the file may be "
                              f"malicious); use only checkpoints from a source you trust, e.g. the official "
                              f"release") from None

    def op_GLOBAL(self):
        module = self.line()
        self._global(module, self.line())

    def op_STACK_GLOBAL(self):
        name, module = self.pop(), self.pop()
        if not isinstance(module, str) or not isinstance(name, str):
            raise _Refused("STACK_GLOBAL with names that are not strings")
        self._global(module, name)

    def op_REDUCE(self):
        args, func = self.pop(), self.pop()
        if not isinstance(func, _Global):
            raise _Refused(f"the pickle calls {short(func)}, which is not an allowed function")
        if not isinstance(args, tuple):
            raise _Refused(f"the pickle calls {func.name} with arguments {short(args)}, not a tuple")
        self.stack.append(func.handler(self, args))

    def op_BUILD(self):
        """Set an object's state: only the attributes of a dict this reader made, and those are dropped.

        torch state dicts are OrderedDicts carrying a `_metadata` attribute (module versions), pickled as BUILD
        with {"_metadata": ...}; nothing here needs it. Anything else (attributes of a stand-in, slot state) is
        refused, so that a file cannot change an object other than its own."""
        state = self.pop()
        target = self.top()
        if state in (None, {}, ()):
            return
        if type(target) in (dict, collections.OrderedDict, collections.Counter) and isinstance(state, dict) \
                and all(isinstance(k, str) for k in state):
            return
        raise _Refused(f"the pickle sets the state of a {type(target).__name__} (BUILD with {short(state)}); a "
                       f"checkpoint of tensors never needs that")

    def op_BINPERSID(self):
        self.stack.append(self.persistent(self.pop()))

    def persistent(self, pid):
        """('storage', storage type, key, location, numel) -> the _Storage of data/<key> (one per key)."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise _Refused(f"unexpected persistent id {short(pid)}; this is not a torch.save checkpoint this "
                           f"reader understands")
        _, storage_type, key, _location, numel = pid
        numel = _int(numel, f"the element count of storage data/{short(key)[1:-1]}")
        storage = self.storages.get(key)
        if storage is None:
            if key not in self.records:
                raise RTDetrError(f"{self.path}: storage data/{short(key)[1:-1]} is missing from the archive; the "
                                  f"file is damaged, download it again")
            storage = self.storages[key] = _Storage(key, storage_type.dtype, numel)
        elif (storage.dtype, storage.numel) != (storage_type.dtype, numel):
            raise _Refused(f"storage data/{short(key)[1:-1]} is described twice, differently")
        return storage


_OPCODES = {
    b"\x80": "PROTO", b"\x95": "FRAME", b".": "STOP", b"(": "MARK", b"0": "POP", b"1": "POP_MARK", b"2": "DUP",
    b"N": "NONE", b"\x88": "NEWTRUE", b"\x89": "NEWFALSE", b"J": "BININT", b"K": "BININT1", b"M": "BININT2",
    b"\x8a": "LONG1", b"\x8b": "LONG4", b"G": "BINFLOAT", b"\x8c": "SHORT_BINUNICODE", b"X": "BINUNICODE",
    b"\x8d": "BINUNICODE8", b"U": "SHORT_BINSTRING", b"T": "BINSTRING", b"C": "SHORT_BINBYTES", b"B": "BINBYTES",
    b"\x8e": "BINBYTES8", b"]": "EMPTY_LIST", b"}": "EMPTY_DICT", b"\x8f": "EMPTY_SET", b")": "EMPTY_TUPLE",
    b"t": "TUPLE", b"\x85": "TUPLE1", b"\x86": "TUPLE2", b"\x87": "TUPLE3", b"l": "LIST", b"d": "DICT",
    b"\x91": "FROZENSET", b"a": "APPEND", b"e": "APPENDS", b"s": "SETITEM", b"u": "SETITEMS", b"\x90": "ADDITEMS",
    b"q": "BINPUT", b"r": "LONG_BINPUT", b"\x94": "MEMOIZE", b"h": "BINGET", b"j": "LONG_BINGET", b"c": "GLOBAL",
    b"\x93": "STACK_GLOBAL", b"R": "REDUCE", b"b": "BUILD", b"Q": "BINPERSID",
}
# Known opcodes that are refused (named in the message): object creation without an allowed function, text
# protocol 0 forms torch never writes, extension registry, out-of-band buffers.
_REFUSED = {b"i": "INST", b"o": "OBJ", b"\x81": "NEWOBJ", b"\x92": "NEWOBJ_EX", b"\x82": "EXT1", b"\x83": "EXT2",
            b"\x84": "EXT4", b"\x96": "BYTEARRAY8", b"\x97": "NEXT_BUFFER", b"\x98": "READONLY_BUFFER",
            b"P": "PERSID", b"I": "INT", b"L": "LONG", b"F": "FLOAT", b"S": "STRING", b"V": "UNICODE",
            b"g": "GET", b"p": "PUT"}


# ---------------------------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------------------------

def _check_layout(lazy, name, path):
    """Number of elements of the tensor, after checking that every element it views lies inside its storage."""
    size, stride, offset = lazy.size, lazy.stride, lazy.offset
    numel = 1
    for n in size:
        numel *= n
    if numel == 0:
        return 0
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))          # highest element index touched
    if last >= lazy.storage.numel:
        raise RTDetrError(f"{path}: tensor {name} reaches element {last} of a storage of {lazy.storage.numel}; "
                          f"the file is damaged or truncated, download it again")
    return numel


def _read_storage(archive, info, storage, little_endian, path):
    """The storage's elements as a 1-D NumPy array [numel]."""
    with archive.open(info) as f:
        raw = f.read(storage.nbytes + 1)
    if len(raw) != storage.nbytes:
        raise RTDetrError(f"{path}: storage data/{storage.key} has {len(raw)} bytes, its {storage.numel} elements "
                          f"need {storage.nbytes}; the file is damaged or truncated, download it again")
    if storage.dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype="<u2" if little_endian else ">u2")                # [numel]
        return (bits.astype(np.uint32) << 16).view(np.float32)                           # exact widening
    dtype = np.dtype(storage.dtype).newbyteorder("<" if little_endian else ">")
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)  # [numel]


def _materialise(lazy, storage):
    """as_strided(storage, size, stride, offset), copied to a fresh C-contiguous array."""
    if 0 in lazy.size:
        return np.empty(lazy.size, dtype=storage.dtype)
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[lazy.offset:], shape=lazy.size,
                                           strides=tuple(s * item for s in lazy.stride))   # [*size]
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
        keys = ", ".join(short(k) for k in list(checkpoint)[:8])
        raise RTDetrError(f"{path}: no state dict found (top-level keys {keys}); expected 'ema' -> 'module', "
                          f"'model', or a dict of tensors as torch.save(model.state_dict()) writes")
    raise RTDetrError(f"{path}: the checkpoint is a {type(checkpoint).__name__}, not a dict; expected a state "
                      f"dict or an RT-DETR training checkpoint")


def _plan(state, path, archive_bytes, pickle_bytes, records):
    """Check the chosen tensors before reading anything: names, layouts, entry sizes and the memory bounds."""
    storages, tensor_bytes = {}, 0
    for key, value in state.items():
        if not isinstance(key, str):
            raise RTDetrError(f"{path}: state dict key {short(key)} is not a string; this reader expects a plain "
                              f"state dict of named tensors")
        if not isinstance(value, _LazyTensor):
            raise RTDetrError(f"{path}: state dict entry {short(key)} is a {type(value).__name__}, not a tensor; "
                              f"this reader expects a plain state dict of tensors")
        tensor_bytes += _check_layout(value, key, path) * _itemsize(value.storage.dtype)
        storages[value.storage.key] = value.storage
    storage_bytes = 0
    for key, storage in storages.items():
        declared = records[key].file_size
        if declared != storage.nbytes:
            raise RTDetrError(f"{path}: zip entry data/{short(key)[1:-1]} declares {declared} bytes, its "
                              f"{storage.numel} elements need {storage.nbytes}; the file is damaged or not a "
                              f"torch.save checkpoint")
        storage_bytes += declared
    if pickle_bytes + storage_bytes > MAX_INFLATION * archive_bytes + (1 << 20):
        raise RTDetrError(f"{path}: the archive declares {pickle_bytes + storage_bytes} bytes of content in a file "
                          f"of {archive_bytes} bytes (more than {MAX_INFLATION} times; a zip bomb?); torch.save "
                          f"does not compress, re-save the checkpoint with torch.save")
    if tensor_bytes > storage_bytes + MAX_EXPANDED_BYTES:
        raise RTDetrError(f"{path}: the tensors would take {tensor_bytes} bytes, {tensor_bytes - storage_bytes} "
                          f"more than the {storage_bytes} bytes of storage they view (stride-0 or overlapping "
                          f"views; at most {MAX_EXPANDED_BYTES} allowed); the file is not a plain checkpoint")


def load_pth(path):
    """Read a torch.save checkpoint without torch; return its state dict as {name: np.ndarray}.

    path: an official RT-DETR .pth ({"ema": {"module": sd}, ...} or {"model": sd, ...}) or any file written by
    torch.save(state_dict). Arrays keep the tensors' shapes and dtypes (bfloat16 -> float32), C-contiguous, in the
    file's key order. Raises RTDetrError for a missing, damaged, legacy-format or refused (unsafe) file.
    """
    name = os.fspath(path)
    with open_regular(name, "a checkpoint file") as raw:
        archive_bytes = os.fstat(raw.fileno()).st_size
        try:
            archive = zipfile.ZipFile(raw)
        except zipfile.BadZipFile:
            raise RTDetrError(f"{name}: not a zip-format torch checkpoint (a legacy torch < 1.6 file, or not a "
                              f"checkpoint at all); re-save it with torch.save from torch >= 1.6, or use "
                              f"safetensors") from None
        except (OSError, ValueError, EOFError) as e:
            raise RTDetrError(f"{name}: cannot read the zip archive ({type(e).__name__}); the file is damaged, "
                              f"download it again") from None
        with archive:
            return _load_archive(archive, name, archive_bytes)


def _load_archive(archive, name, archive_bytes):
    infos = archive.infolist()
    pickles = [i for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") == 1]
    if len(pickles) != 1:
        raise RTDetrError(f"{name}: a torch checkpoint has one <folder>/data.pkl, this zip has {len(pickles)}; "
                          f"it is not a torch.save file")
    prefix = pickles[0].filename[: -len("data.pkl")]                          # "<stem>/"
    records = {i.filename[len(prefix) + len("data/"):]: i for i in infos if i.filename.startswith(prefix + "data/")}
    byteorder = b"little"                                                     # torch's default when absent
    by_name = {i.filename: i for i in infos}
    try:
        if prefix + "byteorder" in by_name:
            with archive.open(by_name[prefix + "byteorder"]) as f:
                byteorder = f.read(16).strip()
            if byteorder not in (b"little", b"big"):
                raise RTDetrError(f"{name}: unknown byteorder record {short(byteorder)}; the file is damaged")
        pickle_bytes = pickles[0].file_size
        if pickle_bytes > MAX_PICKLE_BYTES:
            raise RTDetrError(f"{name}: data.pkl declares {pickle_bytes} bytes (at most {MAX_PICKLE_BYTES}); a "
                              f"checkpoint's is under 1 MB, this is not one")
        with archive.open(pickles[0]) as f:
            data = f.read(MAX_PICKLE_BYTES + 1)
        try:
            checkpoint = _PickleReader(data, name, records).load()
        except _Refused as e:
            raise RTDetrError(f"{name}: refused to load data.pkl: {e}; the file is damaged, or not a checkpoint "
                              f"of tensors") from None
        except (RecursionError, MemoryError, OverflowError) as e:
            raise RTDetrError(f"{name}: refused to load data.pkl ({type(e).__name__}); the file is not a "
                              f"checkpoint of tensors") from None
        state = _pick_state_dict(checkpoint, name)
        _plan(state, name, archive_bytes, pickle_bytes, records)
        cache, out = {}, {}
        for key, value in state.items():
            storage = cache.get(value.storage.key)
            if storage is None:
                storage = cache[value.storage.key] = _read_storage(
                    archive, records[value.storage.key], value.storage, byteorder == b"little", name)
            out[key] = _materialise(value, storage)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, ValueError) as e:
        # zipfile: bad CRC, truncated entry, unsupported compression or encryption
        raise RTDetrError(f"{name}: the archive cannot be read ({type(e).__name__}: {short(str(e))[1:-1]}); the "
                          f"file is damaged or truncated, download it again") from None
    return out
