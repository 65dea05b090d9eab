#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<target>/: small valid inputs of every format, laid out
as each target reads its input. Run from anywhere; rewrites the seed-* files (found crashes, kept
as crash-* files, stay). The formats are spelt out here on purpose, independently of the C++
writers, so a seed is also a check of the documented layout."""
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


# FuzzedDataProvider takes integers from the end of the input and ConsumeRandomLengthString from
# the front, where "\\\\" is one backslash and "\\" followed by any other byte ends the string.
def random_length_string(s):
    return s.replace(b"\\", b"\\\\") + b"\\;"


# --- protobuf wire format --------------------------------------------------------------------
def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_varint(num, n):
    return varint(num << 3) + varint(n)


def field_bytes(num, b):
    b = b.encode() if isinstance(b, str) else b
    return varint(num << 3 | 2) + varint(len(b)) + b


def field_double(num, x):
    return varint(num << 3 | 1) + struct.pack("<d", x)


# --- config_fuzz: YAML, then NUL and one override per line ------------------------------------
def config_seeds():
    for path in sorted((ROOT.parent / "configs").glob("*.yaml")):
        write("config_fuzz", path.stem, path.read_bytes())
    synthetic = (ROOT.parent / "configs" / "synthetic_mlp.yaml").read_bytes()
    write("config_fuzz", "overrides",
          synthetic + b"\0train.epochs=2\nmodel.hidden=[8, 4]\noptimizer.type=adamw\n"
          b"strategy.type=ddp\ndata.synthetic_shape=[3,4]")
    write("config_fuzz", "sequential",
          "model:\n  type: sequential\n  layers:\n"
          "    - {type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}\n"
          "    - {type: relu}\n    - {type: flatten}\n    - {type: linear, out_features: 10}\n"
          "data: {name: synthetic, synthetic_shape: [1, 8, 8]}\n")
    write("config_fuzz", "empty", b"")


# --- checkpoint_fuzz: mode byte (even: payload framed by the harness; odd: whole file) ----------
def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def tensor(name, shape, dtype, raw):
    packed_shape = b"".join(varint(d) for d in shape)
    return field_bytes(1, name) + field_bytes(2, packed_shape) + field_bytes(3, dtype) + \
        field_bytes(4, raw)


def map_entry(num, key, value_field):
    return field_bytes(num, field_bytes(1, key) + value_field)


def checkpoint_seeds():
    payload = (field_varint(1, 12) + field_varint(2, 1) + field_varint(3, 3) + field_varint(4, 2) +
               field_bytes(5, "model: {type: mlp, hidden: [2]}\n") +
               field_bytes(6, tensor("fc1.weight", [2, 3], "float32",
                                     struct.pack("<6f", 1, -2, 0.5, 0, 3, -0.25))) +
               field_bytes(6, tensor("fc1.bias", [2], "float64", struct.pack("<2d", 0.1, -1))) +
               field_bytes(6, tensor("counter", [], "int64", struct.pack("<q", -7))) +
               field_bytes(7, tensor("fc1.weight.momentum", [3, 2], "float32", bytes(24))) +
               map_entry(8, "beta1", field_double(2, 0.9)) +
               field_varint(9, 12) +
               map_entry(10, "dropout", field_varint(2, 99)) +
               map_entry(11, "loss", field_double(2, 1.5)))
    write("checkpoint_fuzz", "payload", b"\0" + payload)
    header = b"DTCK" + struct.pack("<IQI", 1, len(payload), crc32c(payload))
    write("checkpoint_fuzz", "file", b"\1" + header + payload)
    write("checkpoint_fuzz", "empty-payload", b"\0")


# --- idx_fuzz: images (random-length string), labels (the rest), mode byte last ----------------
def idx_seeds():
    images = struct.pack(">IIII", 0x803, 2, 3, 3) + bytes(range(18))
    labels = struct.pack(">II", 0x801, 2) + bytes([3, 9])
    for mode in range(4):
        write("idx_fuzz", f"mode{mode}", random_length_string(images) + labels + bytes([mode]))


# --- npy_fuzz: the file ------------------------------------------------------------------------
def npy(descr, shape, raw, version=1):
    dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}"
    length_bytes = 2 if version == 1 else 4
    pad = -(10 + (length_bytes - 2) + len(header) + 1) % 64
    header = (header + " " * pad + "\n").encode()
    length = struct.pack("<H" if version == 1 else "<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + length + header + raw


def npy_seeds():
    write("npy_fuzz", "f4", npy("<f4", [2, 3], struct.pack("<6f", *range(6))))
    write("npy_fuzz", "u1", npy("|u1", [4], bytes([0, 1, 2, 255])))
    write("npy_fuzz", "i8", npy("<i8", [2, 1], struct.pack("<2q", 5, -5)))
    write("npy_fuzz", "f8-v2", npy("<f8", [1], struct.pack("<d", 2.5), version=2))
    write("npy_fuzz", "scalar", npy("<i4", [], struct.pack("<i", 42)))


# --- store_fuzz: phase byte (even: before the handshake; odd: after), then frames -------------
def store_frame(request):
    return struct.pack("<I", len(request)) + request


def store_seeds():
    handshake = field_bytes(1, field_bytes(1, "fuzz-store-token") + field_varint(2, 1))
    write("store_fuzz", "handshake", b"\0" + store_frame(handshake))
    write("store_fuzz", "wrong-token",
          b"\0" + store_frame(field_bytes(1, field_bytes(1, "fuzz-store-tokex") +
                                          field_varint(2, 1))))
    write("store_fuzz", "too-long", b"\0" + struct.pack("<I", 1 << 20) + b"x" * 64)
    requests = [
        field_bytes(2, field_bytes(1, "k") + field_bytes(2, "v")),                     # set
        field_bytes(3, field_bytes(1, "k")),                                           # get
        field_bytes(3, field_bytes(1, "absent") + field_varint(2, 1) +
                    field_varint(3, 50)),                                              # get, wait
        field_bytes(4, field_bytes(1, "k") + field_bytes(1, "absent") +
                    field_varint(2, 20)),                                              # wait
        field_bytes(5, field_bytes(1, "n") + field_varint(2, 5)),                      # add
        field_bytes(6, field_bytes(1, "k") + field_bytes(2, "v") + field_bytes(3, "w")),  # cas
        field_bytes(7, field_bytes(1, "k")),                                           # delete
        field_bytes(8, b""),                                                           # num_keys
        handshake,                                                                     # twice
    ]
    write("store_fuzz", "requests", b"\1" + b"".join(store_frame(r) for r in requests))
    write("store_fuzz", "parked-get",
          b"\1" + store_frame(field_bytes(3, field_bytes(1, "never") + field_varint(2, 1) +
                                          field_varint(3, 100000))))


# --- tcp_fuzz: stranger bytes (random-length string), rank 1's frames, mode byte last ---------
def tcp_frame(kind, nbytes, sequence, tag, what, address=0):
    return struct.pack("<QQIIQ", nbytes, sequence, tag, kind, address) + \
        what.encode().ljust(64, b"\0")[:64]


def tcp_seeds():
    floats = struct.pack("<4f", 1, 2, 3, 4)
    what = "collective #1 all_reduce(sum) float32 x 8"
    all_reduce = tcp_frame(0, 16, 1, 0, what) + floats + tcp_frame(0, 16, 1, 0, what) + floats
    broadcast = tcp_frame(0, 32, 1, 0, "collective #1 broadcast(root 1) float32 x 8") + floats * 2
    recv = tcp_frame(0, 32, 0, 7, "collective #0 send(to 0, tag 7) float32 x 8") + floats * 2
    gather = tcp_frame(0, 32, 1, 0, "collective #1 all_gather float32 x 8") + floats * 2
    stranger = random_length_string(b"dtraint1" + struct.pack("<ii", 1, 2) + b"0" * 32)
    for mode, frames in enumerate([all_reduce, broadcast, recv, gather]):
        write("tcp_fuzz", f"collective{mode}", random_length_string(b"") + frames + bytes([mode]))
        write("tcp_fuzz", f"collective{mode}-stranger", stranger + frames + bytes([mode | 4]))
    by_address = tcp_frame(1, 16, 1, 0, what, address=0x1000) + tcp_frame(2, 0, 1, 0, what)
    write("tcp_fuzz", "by-address", random_length_string(b"") + by_address + bytes([8]))


if __name__ == "__main__":
    for f in CORPUS.glob("*/seed-*"):
        f.unlink()
    config_seeds()
    checkpoint_seeds()
    idx_seeds()
    npy_seeds()
    store_seeds()
    tcp_seeds()
