"""Reader for dlib's serialised face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``).

dlib writes a network as nested templates: every ``add_layer`` writes its version, then its
whole sub-network, then its own layer details; tag and skip layers write only a version. The
file therefore starts with a run of versions (outermost first), then the input layer, then the
details of every real layer from the bottom up. Tag ids (``tag1``/``tag2``/``skip1``) live in
the C++ type, not in the file, so the reader checks the stream against the published network
type (``anet_type`` of dlib's ``dnn_face_recognition_ex.cpp``) and takes the ids from there.

Encodings (dlib/serialize.h): an integer is a control byte (low nibble: byte count, bit 7: sign)
then little-endian magnitude bytes; a float is an integer mantissa and an integer power of two;
a string is a length then bytes; a bool is the character ``'0'`` or ``'1'``; a tensor is version
2, four dimensions (n, k, nr, nc) then raw little-endian float32 values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]


class DlibFormatError(ValueError):
    """The file is not the network this reader knows."""


@dataclass(frozen=True)
class InputRGB:
    """``input_rgb_image_sized``: tensor = (pixel - mean) / 256, channels R, G, B."""

    mean_rgb: tuple[float, float, float]
    size: int


@dataclass(frozen=True)
class Conv:
    weight: Array  # (out, in, kh, kw), cross-correlation like cuDNN
    bias: Array  # (out,)
    stride: int
    pad: int


@dataclass(frozen=True)
class Affine:
    """Batch norm folded by dlib into a per-channel ``x * gamma + beta``."""

    gamma: Array  # (k,)
    beta: Array  # (k,)


@dataclass(frozen=True)
class Relu:
    pass


@dataclass(frozen=True)
class Pool:
    kind: Literal["max", "avg"]
    size: int  # 0 means the whole spatial extent (avg_pool_everything)
    stride: int
    pad: int


@dataclass(frozen=True)
class Fc:
    weight: Array  # (in, out): y = x @ weight
    bias: Array | None


@dataclass(frozen=True)
class Tag:
    id: int


@dataclass(frozen=True)
class Skip:
    """Replace the running value by the output remembered under ``tag<id>``."""

    id: int


@dataclass(frozen=True)
class AddPrev:
    """Add the output remembered under ``tag<id>``; dlib zero-fills the smaller tensor."""

    id: int


Layer = Conv | Affine | Relu | Pool | Fc | Tag | Skip | AddPrev


@dataclass(frozen=True)
class DlibNet:
    """The parsed network: input transform, layers bottom-up, the loss's distance threshold."""

    input: InputRGB
    layers: tuple[Layer, ...]
    dist_thresh: float

    @property
    def embedding_dim(self) -> int:
        last = self.layers[-1]
        if not isinstance(last, Fc):
            raise DlibFormatError("the network does not end with a fully connected layer")
        return int(last.weight.shape[1])


# --- the published network type, bottom-up ------------------------------------------------
# Tokens: layer kinds the file stores, plus tag/skip/add_prev ids the C++ type carries.


# block<N,BN,stride> = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>
_BLOCK = ["con", "affine", "relu", "con", "affine"]


def _ares() -> list[str]:
    # relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
    return ["tag1", *_BLOCK, "add_prev1", "relu"]


def _ares_down() -> list[str]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
    return ["tag1", *_BLOCK, "tag2", "skip1", "avg_pool", "add_prev2", "relu"]


def anet_tokens() -> list[str]:
    """Layer tokens of dlib's ``anet_type``, input side first."""
    tokens = ["con", "affine", "relu", "max_pool"]
    tokens += _ares() * 3  # alevel4: 32 filters
    tokens += _ares_down() + _ares() * 3  # alevel3: 64
    tokens += _ares_down() + _ares() * 2  # alevel2: 128
    tokens += _ares_down() + _ares() * 2  # alevel1: 256
    tokens += _ares_down()  # alevel0: 256
    tokens += ["avg_pool", "fc"]  # avg_pool_everything, fc_no_bias<128>
    return tokens


# --- byte stream ----------------------------------------------------------------------------


class _Stream:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError("unexpected end of file")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def read_int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if size > 8:
            raise DlibFormatError(f"bad integer control byte {control:#x} at {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def read_float(self) -> float:
        mantissa = self.read_int()
        exponent = self.read_int()
        if abs(exponent) > 2000:  # dlib's inf/nan markers: never valid in a trained model
            raise DlibFormatError("non-finite float in the model")
        return float(mantissa) * 2.0**exponent

    def read_string(self) -> str:
        return self._take(self.read_int()).decode("ascii")

    def read_bool(self) -> bool:
        ch = self._take(1)
        if ch not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool {ch!r} at {self.pos - 1}")
        return ch == b"1"

    def read_tensor(self) -> Array:
        if (version := self.read_int()) != 2:
            raise DlibFormatError(f"unknown tensor version {version}")
        shape = tuple(self.read_int() for _ in range(4))
        count = int(np.prod(shape))
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def read_alias(self) -> tuple[int, ...]:
        if (version := self.read_int()) != 1:
            raise DlibFormatError(f"unknown alias_tensor version {version}")
        return tuple(self.read_int() for _ in range(4))

    def expect(self, name: str) -> None:
        found = self.read_string()
        if found != name:
            raise DlibFormatError(f"expected {name!r}, found {found!r}")


def _read_details(s: _Stream) -> tuple[str, Layer | None]:
    """One layer's details; returns its token kind and the parsed layer (None for markers)."""
    name = s.read_string()
    if name == "con_4":
        params = s.read_tensor().reshape(-1)
        n_filters, nr, nc, stride_y, stride_x, pad_y, pad_x = (s.read_int() for _ in range(7))
        filters = s.read_alias()
        bias_shape = s.read_alias()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            s.read_float()
        if nr != nc or stride_y != stride_x or pad_y != pad_x:
            raise DlibFormatError("only square convolutions are supported")
        n_weights = int(np.prod(filters))
        if filters[0] != n_filters or params.size != n_weights + int(np.prod(bias_shape)):
            raise DlibFormatError("convolution parameter sizes disagree")
        weight = params[:n_weights].reshape(filters)
        return "con", Conv(weight, params[n_weights:].copy(), stride_y, pad_y)
    if name == "affine_":
        params = s.read_tensor().reshape(-1)
        gamma_shape = s.read_alias()
        s.read_alias()  # beta has gamma's shape
        if s.read_int() != 0:  # CONV_MODE (0): one gamma/beta per channel
            raise DlibFormatError("only per-channel affine layers are supported")
        k = int(np.prod(gamma_shape))
        return "affine", Affine(params[:k].copy(), params[k : 2 * k].copy())
    if name == "relu_":
        return "relu", Relu()
    if name in ("max_pool_2", "avg_pool_2"):
        nr, nc, stride_y, stride_x, pad_y, pad_x = (s.read_int() for _ in range(6))
        if nr != nc or stride_y != stride_x or pad_y != pad_x:
            raise DlibFormatError("only square pooling is supported")
        kind: Literal["max", "avg"] = "max" if name.startswith("max") else "avg"
        return f"{kind}_pool", Pool(kind, nr, stride_y, pad_y)
    if name == "add_prev_":
        return "add_prev", None
    if name == "fc_2":
        n_out, n_in = s.read_int(), s.read_int()
        params = s.read_tensor().reshape(-1)
        s.read_alias()
        s.read_alias()
        s.read_int()  # bias mode, implied by the parameter count below
        for _ in range(4):
            s.read_float()
        if params.size == n_in * n_out:
            return "fc", Fc(params.reshape(n_in, n_out).copy(), None)
        if params.size == (n_in + 1) * n_out:
            table = params.reshape(n_in + 1, n_out)
            return "fc", Fc(table[:n_in].copy(), table[n_in].copy())
        raise DlibFormatError("fully connected parameter size disagrees")
    raise DlibFormatError(f"unsupported dlib layer {name!r}")


def _read_add_layer_tail(s: _Stream) -> None:
    for _ in range(3):
        s.read_bool()
    for _ in range(3):  # x_grad, cached_output, params_grad/grad_final: training state
        s.read_tensor()


def parse_dlib_net(data: bytes) -> DlibNet:
    """Parse the serialised network and check it is dlib's published face-recognition ResNet."""
    s = _Stream(data)
    if s.read_int() != 1:
        raise DlibFormatError("unknown add_loss_layer version")
    s.expect("loss_metric_2")
    s.read_float()  # margin: training only
    dist_thresh = s.read_float()

    versions: list[int] = []
    while True:
        v = s.read_int()
        if v not in (1, 2, 3):
            raise DlibFormatError(f"unknown layer version {v}")
        versions.append(v)
        if v == 3:  # the bottom add_layer, holding the input layer
            break

    s.expect("input_rgb_image_sized")
    mean = (s.read_float(), s.read_float(), s.read_float())
    nr, nc = s.read_int(), s.read_int()
    if nr != nc:
        raise DlibFormatError("only square inputs are supported")
    net_input = InputRGB(mean, nr)

    found: list[tuple[str, Layer | None]] = []
    for i, v in enumerate(reversed(versions)):  # bottom-up
        if v == 1:
            found.append(("marker", None))
            continue
        found.append(_read_details(s))
        _read_add_layer_tail(s)
        if i == 0 and s.read_int() != 1:  # bottom layer: sample expansion factor
            raise DlibFormatError("unexpected sample expansion factor")
    if s.pos != len(s.data):
        raise DlibFormatError(f"{len(s.data) - s.pos} trailing bytes")

    tokens = anet_tokens()
    if len(tokens) != len(found):
        raise DlibFormatError(f"expected {len(tokens)} layers, found {len(found)}")
    layers: list[Layer] = []
    for token, (kind, layer) in zip(tokens, found, strict=True):
        family = token.rstrip("0123456789")
        if family in ("tag", "skip"):
            if kind != "marker":
                raise DlibFormatError(f"expected {token}, found {kind}")
            tag_id = int(token[len(family) :])
            layers.append(Tag(tag_id) if family == "tag" else Skip(tag_id))
        elif family == "add_prev":
            if kind != "add_prev":
                raise DlibFormatError(f"expected {token}, found {kind}")
            layers.append(AddPrev(int(token[len(family) :])))
        else:
            if kind != token or layer is None:
                raise DlibFormatError(f"expected {token}, found {kind}")
            layers.append(layer)
    return DlibNet(net_input, tuple(layers), dist_thresh)


def load_dlib_net(path: Path) -> DlibNet:
    return parse_dlib_net(path.read_bytes())
