#!/usr/bin/env python3
"""Writes tests/fixtures/pickle/{clean,malicious}/pytorch_model.bin without torch.

Both are the zip layout torch.save writes (archive/data.pkl, archive/.format_version,
archive/.storage_alignment, archive/byteorder, archive/data/<key> aligned to 64 bytes,
archive/version, archive/.data/serialization_id; every entry stored, not compressed), holding a
state dict of three small tensors. In the malicious one, the state dict has one more entry
between the tensors whose value unpickles as REDUCE(builtins.exec, (code,)): Python's pickle
(torch.load with weights_only=False) runs the code, which writes the marker file MARKER_NAME in
the temporary directory. The pickle itself comes from Python's own pickler, with stand-in
`torch` modules so the globals read `torch._utils _rebuild_tensor_v2` and `torch FloatStorage`
as torch writes them.

Run: python3 scripts/make_pickle_fixtures.py (paths are taken from the repository root).
It then checks both files: the clean one unpickles to the three tensors, and unpickling the
malicious one with Python's pickle does create the marker (which it removes again).
"""

import collections
import io
import os
import pickle
import struct
import sys
import tempfile
import types
import zipfile
from pathlib import Path

MARKER_NAME = "bert-rs-pickle-payload-ran"
PAYLOAD = (
    "import os, tempfile; "
    f"open(os.path.join(tempfile.gettempdir(), {MARKER_NAME!r}), 'w').write('the pickle ran code')"
)
ALIGNMENT = 64
OUT = Path("tests/fixtures/pickle")


def stand_in_torch():
    """Modules named torch and torch._utils with the globals a state dict refers to."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    torch._utils = utils

    def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks):
        return (storage, offset, size, stride)

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ["FloatStorage", "LongStorage"]:
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils
    return torch, utils


TORCH, UTILS = stand_in_torch()


class Storage:
    def __init__(self, kind, key, fmt, values):
        self.kind, self.key, self.fmt, self.values = kind, key, fmt, values

    def bytes(self):
        return struct.pack(f"<{len(self.values)}{self.fmt}", *self.values)


class Tensor:
    def __init__(self, storage, offset, size):
        self.storage, self.offset, self.size = storage, offset, size

    def __reduce__(self):
        stride, step = [], 1
        for dim in reversed(self.size):
            stride.insert(0, step)
            step *= dim
        return (
            UTILS._rebuild_tensor_v2,
            (self.storage, self.offset, tuple(self.size), tuple(stride), False,
             collections.OrderedDict()),
        )


class Payload:
    def __reduce__(self):
        return (exec, (PAYLOAD,))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.kind, obj.key, "cpu", len(obj.values))
        return None


def tensors():
    weights = Storage(TORCH.FloatStorage, "0", "f", [0.5 * i - 1.0 for i in range(8)])
    positions = Storage(TORCH.LongStorage, "1", "q", [0, 1, 2, 3])
    return weights, positions, [
        ("embeddings.word_embeddings.weight", Tensor(weights, 0, [2, 3])),
        ("embeddings.position_ids", Tensor(positions, 0, [1, 4])),
        # A view into the same storage at an offset, as torch writes tied or sliced tensors.
        ("embeddings.LayerNorm.bias", Tensor(weights, 6, [2])),
    ]


def state_dict(malicious):
    weights, positions, items = tensors()
    if malicious:
        items.insert(1, ("embeddings.payload", Payload()))
    return [weights, positions], collections.OrderedDict(items)


def zip_entry(name):
    info = zipfile.ZipInfo(f"archive/{name}", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    return info


def write_checkpoint(path, malicious):
    storages, sd = state_dict(malicious)
    buf = io.BytesIO()
    # torch.save's protocol 2; without fix_imports, `builtins` stays `builtins` (an attacker's
    # hand-written pickle would name whatever module it likes).
    TorchPickler(buf, protocol=2, fix_imports=False).dump(sd)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as z:
        entries = [
            ("data.pkl", buf.getvalue()),
            (".format_version", b"1"),
            (".storage_alignment", str(ALIGNMENT).encode()),
            ("byteorder", b"little"),
        ]
        entries += [(f"data/{s.key}", s.bytes()) for s in storages]
        entries += [("version", b"3\n"), (".data/serialization_id", b"0" * 40)]
        for name, data in entries:
            info = zip_entry(name)
            if name.startswith("data/"):
                # Pad the local header's extra field so the data starts on ALIGNMENT bytes,
                # as torch's writer does (extra field id "FB").
                start = raw.tell() + 30 + len(info.filename.encode()) + 4
                pad = -start % ALIGNMENT
                info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            z.writestr(info, data)
    path.write_bytes(raw.getvalue())
    return path


class PythonUnpickler(pickle.Unpickler):
    """What torch.load(weights_only=False) does with the file: resolves every global."""

    def persistent_load(self, pid):
        return pid


def check(clean, malicious):
    marker = Path(tempfile.gettempdir()) / MARKER_NAME
    marker.unlink(missing_ok=True)
    with zipfile.ZipFile(clean) as z:
        sd = PythonUnpickler(io.BytesIO(z.read("archive/data.pkl"))).load()
    assert list(sd) == [k for k, _ in tensors()[2]], list(sd)
    assert not marker.exists()
    with zipfile.ZipFile(malicious) as z:
        pkl = z.read("archive/data.pkl")
        assert b"cbuiltins\nexec\n" in pkl
        PythonUnpickler(io.BytesIO(pkl)).load()
    assert marker.exists(), "the payload did not run under Python's pickle"
    marker.unlink()
    print(f"checked: Python's pickle runs the payload of {malicious} (marker {marker} removed)")


def main():
    clean = write_checkpoint(OUT / "clean" / "pytorch_model.bin", malicious=False)
    malicious = write_checkpoint(OUT / "malicious" / "pytorch_model.bin", malicious=True)
    for p in (clean, malicious):
        print(f"wrote {p} ({p.stat().st_size} bytes)")
    check(clean, malicious)


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parent.parent)
    main()
