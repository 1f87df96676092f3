"""Symbols in, bytes out: each entropy model codes its own symbols with the integer tables it exported.

A payload is two byte strings: range-coded 32-bit words (constriction) and the escaped values, int32, that
fell outside their table (both little-endian). The range coder only ever sees integer frequency tables
fixed when the model was exported, so the decoder reproduces the encoder's symbols exactly on any machine
and thread count. constriction is imported inside the functions: the training path runs without it.
"""

from __future__ import annotations

import numpy as np
import torch

from aeflow.models.entropy import TABLE_BITS
from aeflow.models.hyperprior import LAYERS as _HS_LAYERS
from aeflow.models.hyperprior import scales_and_means

_LAST_HS = _HS_LAYERS[-1][0]


class BitstreamError(ValueError):
    """A bitstream that cannot be decoded (truncated, corrupted, unknown version, wrong model). Defined here,
    the lowest layer that can find a stream malformed; aeflow.bitstream is its home for callers."""


# --- integer tables and their range-coder models -------------------------------------------------

def _split(extra: dict[str, torch.Tensor], name: str) -> list[np.ndarray]:
    """Flattened integer tables (`name`.offsets, `name`.freqs) -> probabilities, exact in float64."""
    offsets = extra[f"{name}.offsets"].numpy().astype(np.int64)
    freqs = extra[f"{name}.freqs"].numpy().astype(np.float64) / (1 << TABLE_BITS)
    return [freqs[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


class _Table:
    """One integer table: values lo .. lo + size - 2, then the escape symbol for anything else."""

    def __init__(self, probs: np.ndarray, lo: int):
        self.lo, self.size, self.probs = int(lo), len(probs), probs
        import constriction

        self.model = constriction.stream.model.Categorical(probs, perfect=False)


class Tables:
    """A codec model's integer frequency tables as range-coder models: one per (level, channel) of the
    factorized priors; with a hyperprior, one per channel of z (per level where it codes every level)
    and one per Gaussian scale."""

    def __init__(self, extra: dict[str, torch.Tensor]):
        self._tables: dict[tuple, _Table] = {}
        self.hyper = "hyper.g.freqs" in extra
        self.factorized = "coder.lo" in extra  # a factorized prior per level (a top-level hyperprior beside them)
        if self.factorized:
            self.lo = extra["coder.lo"].numpy().astype(np.int64)  # (levels, channels)
            self.levels, self.channels = self.lo.shape
            self._probs = _split(extra, "coder")
        elif self.hyper:  # the hyperprior codes every level
            self.levels = extra["hyper.z.lo"].shape[0] if extra["hyper.z.lo"].dim() == 2 else 1
            self.channels = extra[f"hyper.{_LAST_HS}.weight"].shape[0] // 2
        else:
            raise BitstreamError("this codec model has no entropy-coder tables (re-export it with aeflow train)")
        self.hyper_levels: frozenset[int] = frozenset()
        if self.hyper:
            self.extra = extra
            self.z_lo = extra["hyper.z.lo"].numpy().astype(np.int64).reshape(-1, extra["hyper.z.lo"].shape[-1])
            self.z_channels = self.z_lo.shape[1]
            every = self.z_lo.shape[0] > 1 or not self.factorized
            self.hyper_levels = frozenset(range(self.levels)) if every else frozenset({self.levels - 1})
            self._z_probs, self._g_probs = _split(extra, "hyper.z"), _split(extra, "hyper.g")

    def prior(self, level: int, channel: int) -> _Table:
        key = ("prior", level, channel)
        if key not in self._tables:
            self._tables[key] = _Table(self._probs[level * self.channels + channel], self.lo[level, channel])
        return self._tables[key]

    def side(self, level: int, channel: int) -> _Table:
        row = level if self.z_lo.shape[0] > 1 else 0  # one z prior per level, or one for the top level
        key = ("z", row, channel)
        if key not in self._tables:
            self._tables[key] = _Table(self._z_probs[row * self.z_channels + channel], self.z_lo[row, channel])
        return self._tables[key]

    def gaussian(self, index: int) -> _Table:
        key = ("g", index)
        if key not in self._tables:
            probs = self._g_probs[index]
            self._tables[key] = _Table(probs, -((len(probs) - 2) // 2))
        return self._tables[key]


_TABLES: dict[str, Tables] = {}


def tables_of(loaded) -> Tables:
    """The Tables of a modelstore.LoadedModel, built once per process."""
    if loaded.fingerprint not in _TABLES:
        _TABLES[loaded.fingerprint] = Tables(loaded.extra)
    return _TABLES[loaded.fingerprint]


# --- one range-coded payload, escapes beside it ---------------------------------------------------

class _Writer:
    """Range-codes integer values table by table; values outside a table go as its escape symbol, and
    their raw value to the escapes."""

    def __init__(self):
        import constriction

        self.encoder = constriction.stream.queue.RangeEncoder()
        self.escapes: list[np.ndarray] = []

    def put(self, values: np.ndarray, table: _Table) -> None:
        sym = values - table.lo
        esc = table.size - 1
        out = (sym < 0) | (sym >= esc)
        if out.any():
            self.escapes.append(values[out])
            sym = np.where(out, esc, sym)
        self.encoder.encode(sym.astype(np.int32), table.model)

    def finish(self) -> tuple[bytes, bytes]:
        words = self.encoder.get_compressed().astype("<u4").tobytes()
        return words, np.concatenate(self.escapes).astype("<i4").tobytes() if self.escapes else b""


class _Reader:
    """The inverse of _Writer, over whole 32-bit words and int32 escapes."""

    def __init__(self, words: bytes, escapes: bytes):
        import constriction

        self.decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(words, "<u4").astype(np.uint32))
        self.escapes = np.frombuffer(escapes, "<i4").astype(np.int64)
        self.used = 0

    def get(self, n: int, table: _Table) -> np.ndarray:
        values = self.decoder.decode(table.model, n).astype(np.int64)
        out = values == table.size - 1
        values += table.lo
        k = int(out.sum())
        if k:
            if self.used + k > len(self.escapes):
                raise BitstreamError("malformed bitstream: fewer escaped values than escape symbols")
            values[out] = self.escapes[self.used:self.used + k]
            self.used += k
        return values

    def finish(self) -> None:
        if self.used != len(self.escapes):
            raise BitstreamError("malformed bitstream: escaped values left over")


# --- the factorized prior: one table per channel of a level ----------------------------------------

def encode_factorized(q: np.ndarray, level: int, tables: Tables) -> tuple[bytes, bytes]:
    """Symbols (C, h, w) of level `level` (0-based) -> (words, escapes), channel by channel."""
    q = np.asarray(q, np.int64)
    writer = _Writer()
    for ch in range(q.shape[0]):
        writer.put(q[ch].ravel(), tables.prior(level, ch))
    return writer.finish()


def decode_factorized(words: bytes, escapes: bytes, shape: tuple[int, int, int], level: int,
                      tables: Tables) -> np.ndarray:
    """(words, escapes) -> symbols of `shape` (C, h, w); raises BitstreamError."""
    if not tables.factorized:
        raise BitstreamError(f"level {level + 1}: this model has no factorized tables, only its hyperprior")
    c, h, w = shape
    reader = _Reader(words, escapes)
    q = np.empty((c, h, w), np.int64)
    for ch in range(c):
        q[ch] = reader.get(h * w, tables.prior(level, ch)).reshape(h, w)
    reader.finish()
    return q


# --- the mean-scale hyperprior: z first, then each symbol less its mean under a Gaussian from z ----

def encode_hyper(q: np.ndarray, z: np.ndarray, level: int, tables: Tables) -> tuple[bytes, bytes]:
    """Symbols (M, h, w) and integer side information z (N, h/4, w/4) -> (words, escapes): z under its
    factorized tables, then the residuals q - mean grouped by the Gaussian table that z picks."""
    if level not in tables.hyper_levels:
        raise ValueError(f"level {level + 1} of this codec is not coded under a hyperprior")
    q, z = np.asarray(q, np.int64), np.asarray(z, np.int64)
    writer = _Writer()
    for ch in range(z.shape[0]):
        writer.put(z[ch].ravel(), tables.side(level, ch))
    index, mean = scales_and_means(tables.extra, z, q.shape[1:])
    residual = (q - mean).ravel()
    for k, where in _by_table(index):
        writer.put(residual[where], tables.gaussian(k))
    return writer.finish()


def decode_hyper(words: bytes, escapes: bytes, shape: tuple[int, int, int], level: int,
                 tables: Tables) -> np.ndarray:
    """(words, escapes) -> symbols of `shape` (M, h, w), z decoded first; raises BitstreamError."""
    if level not in tables.hyper_levels:
        raise BitstreamError(f"level {level + 1} was coded with a hyperprior that this model does not have")
    c, h, w = shape
    reader = _Reader(words, escapes)
    zc, zh, zw = tables.z_channels, -(-h // 4), -(-w // 4)
    z = np.empty((zc, zh * zw), np.int64)
    for ch in range(zc):
        z[ch] = reader.get(zh * zw, tables.side(level, ch))
    index, mean = scales_and_means(tables.extra, z.reshape(zc, zh, zw), (h, w))
    q, mean = np.empty(c * h * w, np.int64), mean.ravel()
    for k, where in _by_table(index):
        q[where] = reader.get(len(where), tables.gaussian(k)) + mean[where]
    reader.finish()
    return q.reshape(c, h, w)


def _by_table(index: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The symbols' flat positions grouped by Gaussian table, tables in increasing order and positions in
    raster order within each: one stable sort instead of a pass over every symbol per table."""
    flat = index.ravel()
    order = np.argsort(flat, kind="stable")
    tables, starts = np.unique(flat[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    return [(int(k), order[a:b]) for k, a, b in zip(tables, starts, ends)]
