"""Writes the committed seed corpora under fuzz/seeds/<target>/ from the repository's own
fixtures and formats (Python's standard library only). Run from the repository root:
    python3 fuzz/seeds/make_seeds.py
Each seed is small; the fuzzers grow their working corpus under fuzz/corpus/ (not committed)."""

import collections
import io
import json
import os
import pickle
import struct
import sys
import tarfile
import types
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")
FIXTURES = os.path.join(ROOT, "crates", "clip-data", "tests", "fixtures")


def write(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


# captions: the first byte picks the format (fuzz_targets/captions.rs: 0 flickr30k, 1 flickr8k,
# 2 csv, 3 jsonl, 4 karpathy).
with open(os.path.join(ROOT, "datasets", "synthetic-shapes", "results.csv")) as f:
    flickr30k = "".join(f.readlines()[:6])
write("captions", "flickr30k", b"\x00" + flickr30k.encode())
write("captions", "flickr8k", b"\x01" + b'image,caption\n1000.jpg,A dog runs .\n1000.jpg,"A dog, running"\n1001.jpg,A cat .\n')
write("captions", "csv", b"\x02" + b"image,caption,extra\na.jpg,a red square,1\nb.jpg,\"a blue, round circle\",2\n")
write("captions", "csv_tab", b"\x08" + b"image\tcaption\na.jpg\ta red square\n")
write("captions", "jsonl", b"\x03" + b'{"image": "a.jpg", "caption": "a red square"}\n{"image": "b.jpg", "caption": "two dogs"}\n')
write("captions", "karpathy", b"\x04" + json.dumps({"dataset": "coco", "images": [
    {"filepath": "val2014", "filename": "a.jpg", "split": "test", "sentences": [{"raw": "A cat.", "tokens": ["a", "cat"]}]},
    {"filename": "b.jpg", "split": "restval", "sentences": [{"raw": "A dog."}]},
    {"filename": "c.jpg", "split": "train", "sentences": []}]}).encode())

# config: the repository's smallest configs, one with `--set` overrides after NUL bytes.
for name in ["quickstart.toml", "flickr30k-karpathy.toml"]:
    with open(os.path.join(ROOT, "configs", name), "rb") as f:
        text = f.read()
    write("config", name, text)
write("config", "quickstart-overrides", text + b"\0train.epochs=2\0model.projection_dim=64\0train.lr=3e-4")

# image: the decoding fixtures as they are.
for name in ["gray.jpg", "cmyk.jpg", "gray.png", "pattern.png", "rgba.png"]:
    write("image", name, fixture(name))

# index: index.json, NUL, then the .npy it names (embeddings.npy in the fuzz target).
def npy(rows, dim, version=1):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dim)
    pre = 10 if version == 1 else 12
    header += " " * ((64 - (pre + len(header) + 1) % 64) % 64) + "\n"
    size = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    body = struct.pack("<%df" % (rows * dim), *[0.5] * (rows * dim))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header.encode() + body

meta = {"version": 1, "model_id": "abc123", "run_dir": "/runs/r", "dim": 4,
        "embeddings": "embeddings.npy",
        "entries": [{"path": "/img/a.jpg", "size": 10, "modified": 1}, {"path": "/img/b.jpg", "size": 11, "modified": 2}]}
write("index", "two_rows", json.dumps(meta).encode() + b"\0" + npy(2, 4))
write("index", "npy_v2", json.dumps(meta).encode() + b"\0" + npy(2, 4, version=2))
# Hostile sizes: a header claiming far more than the file holds (each must be an error).
def npy_claim(shape):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % shape
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 8

write("index", "claims_huge_rows", json.dumps(dict(meta, dim=4)).encode() + b"\0" + npy_claim("(25000000000, 4)"))
write("index", "claims_overflow", json.dumps(dict(meta, dim=4611686018427387904)).encode() + b"\0" + npy_claim("(2, 4611686018427387904)"))
write("index", "empty", json.dumps(dict(meta, entries=[])).encode() + b"\0")

# webdataset: one shard, a sample with .jpg + .txt, one with .png + .json, one without image.
shard = io.BytesIO()
with tarfile.open(fileobj=shard, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    def add(name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    add("000000.jpg", fixture("gray.jpg"))
    add("000000.txt", b"a gray square\n")
    add("000001.png", fixture("gray.png"))
    add("000001.json", b'{"caption": "a small gray image", "key": "000001"}')
    add("sub/000002.txt", b"no image here")
write("webdataset", "shard.tar", shard.getvalue())
# A caption member whose header claims 8 GiB (octal size field) in a 2 KiB shard: 000000.txt's
# header follows 000000.jpg's (one header block, one data block).
huge = bytearray(shard.getvalue()[:2048])
assert huge[1024:1034] == b"000000.txt"
huge[1024 + 124:1024 + 136] = b"77777777777\0"
huge[1024 + 148:1024 + 156] = b"        "
huge[1024 + 148:1024 + 156] = b"%06o\0 " % sum(huge[1024:1536])
write("webdataset", "claims_huge_member.tar", bytes(huge))

# torch_file / weights: tensors pickled the way torch.save does, with stand-ins for torch's
# classes (pickle names them by module and qualified name only; nothing of torch is needed).
torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
class FloatStorage:
    pass
FloatStorage.__module__ = "torch"
torch.FloatStorage = FloatStorage
def _rebuild_tensor_v2(*args):
    pass
_rebuild_tensor_v2.__module__ = "torch._utils"
torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
torch._utils = torch_utils
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils

class StorageRef:
    def __init__(self, key, numel, legacy):
        self.key, self.numel, self.legacy = key, numel, legacy

class Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape
    def __reduce__(self):
        stride = tuple(int(__import__("math").prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return (_rebuild_tensor_v2, (self.storage, 0, self.shape, stride, False, collections.OrderedDict()))

class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            if obj.legacy:
                return ("storage", FloatStorage, obj.key, "cpu", obj.numel, None)
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
        return None

def dumps(obj):
    out = io.BytesIO()
    TorchPickler(out, protocol=2).dump(obj)
    return out.getvalue()

def state(legacy):
    s = StorageRef("0", 6, legacy)
    return collections.OrderedDict([("conv1.weight", Tensor(s, (2, 3))), ("fc.bias", Tensor(s, (3,))), ("step", 7)])

floats = struct.pack("<6f", 1, 2, 3, 4, 5, 6)
# torch_file: odd first byte = pickle, four NULs, storage 0 (zipped by the target); an even one:
# a whole zip file as torch.save writes it (stored members under archive/).
pkl = dumps({"state_dict": state(False), "epoch": 3, "hyper_parameters": {"lr": 0.001}})
assert b"\0\0\0\0" not in pkl
write("torch_file", "pickle_checkpoint", b"\x03" + pkl + b"\0\0\0\0" + floats)
# Bit 2: the storage's last four bytes are the size the zip claims for it (here the true one).
write("torch_file", "pickle_claimed_size", b"\x07" + pkl + b"\0\0\0\0" + floats + struct.pack("<I", 28))
write("torch_file", "pickle_state_dict", b"\x01" + dumps(state(False)) + b"\0\0\0\0" + floats)
z = io.BytesIO()
with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("archive/data.pkl", pkl)
    zf.writestr("archive/byteorder", b"little")
    zf.writestr("archive/data/0", floats)
    zf.writestr("archive/version", b"3\n")
write("torch_file", "zip_checkpoint", b"\x02" + z.getvalue())

# weights: safetensors; legacy_torch: a legacy (pre-1.6, non-zip) torch file.
header = json.dumps({"__metadata__": {"format": "pt"},
                     "a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                     "a.bias": {"dtype": "F16", "shape": [2], "data_offsets": [24, 28]}}).encode()
header += b" " * ((8 - len(header) % 8) % 8)
write("weights", "tiny.safetensors", struct.pack("<Q", len(header)) + header + floats + b"\0<\0<")
legacy = io.BytesIO()
for part in [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
             "type_sizes": {"short": 2, "int": 4, "long": 4}}]:
    pickle.dump(part, legacy, protocol=2)
legacy.write(dumps(state(True)))
pickle.dump(["0"], legacy, protocol=2)
legacy.write(struct.pack("<q", 6) + floats)
write("legacy_torch", "legacy.pth", legacy.getvalue())
print("seeds written under", SEEDS)
