"""Examples packed into windows of seq_len + 1 tokens with IGNORE targets; their sampler."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from anetrain.errors import DataError
from anetrain.formats.data import IGNORE, Window

PAD = 0  # the token after an example's end in a window's padding (never a target)


@dataclass
class Example:
    """One record's tokens and which of them are targets with loss."""

    ids: np.ndarray  # int32 [n]
    loss: np.ndarray  # bool [n]: loss[t] = token t is predicted (from t - 1) with loss; loss[0]
    # is always False: nothing in the example comes before its first token


@dataclass
class Packed:
    """A split's windows: x [N, S], y [N, S] (int32; y = IGNORE where nothing is learnt)."""

    x: np.ndarray  # int32 [N, S]
    y: np.ndarray  # int32 [N, S]
    examples: int  # examples in the windows
    truncated: int  # examples longer than S + 1 tokens, cut to their first S + 1
    dropped: int  # examples without a loss target (after truncation), left out

    @property
    def loss_fraction(self) -> float:
        """The fraction of target positions with loss."""
        return float((self.y != IGNORE).mean()) if self.y.size else 0.0


def pack(examples: list[Example], seq_len: int) -> Packed:
    """Greedy, in order: an example goes into the current window when it fits in what is left of
    its S + 1 tokens, else it starts the next one; an example is cut only when it alone is longer
    than S + 1. The first token of an example is never a target (so the target after the previous
    example's EOS is IGNORE), nor is the padding."""
    W = seq_len + 1
    windows: list[tuple[list[np.ndarray], list[np.ndarray]]] = []
    used, n, truncated, dropped = W, 0, 0, 0  # used = W: the first example opens a window
    for ex in examples:
        ids, loss = ex.ids, ex.loss
        if ids.size > W:
            ids, loss = ids[:W], loss[:W]
            if loss.any():
                truncated += 1
        if not loss.any():
            dropped += 1
            continue
        if used + ids.size > W:
            windows.append(([], []))
            used = 0
        windows[-1][0].append(ids)
        windows[-1][1].append(loss)
        used, n = used + ids.size, n + 1
    x = np.full((len(windows), seq_len), PAD, dtype=np.int32)  # [N, S]
    y = np.full((len(windows), seq_len), IGNORE, dtype=np.int32)  # [N, S]
    for i, (ids_list, loss_list) in enumerate(windows):
        w = np.concatenate(ids_list)  # [<= S + 1]
        mask = np.concatenate(loss_list)  # [<= S + 1]
        x[i, : w.size - 1] = w[:-1]
        y[i, : w.size - 1] = np.where(mask[1:], w[1:], IGNORE)
    return Packed(x, y, n, truncated, dropped)


@dataclass
class PackedSplit:
    """A JSONL split: its examples, packed into windows of a seq_len on first use."""

    name: str  # the .jsonl file
    examples: list[Example]
    records: int  # good records read (= len(examples))
    skipped: int  # bad records left out (--skip-bad-records)
    _packed: dict[int, Packed] = field(default_factory=dict, repr=False)

    def packed(self, seq_len: int) -> Packed:
        if seq_len not in self._packed:
            self._packed[seq_len] = pack(self.examples, seq_len)
        return self._packed[seq_len]

    def windows(self, seq_len: int) -> int:
        return self.packed(seq_len).x.shape[0]

    def check(self, seq_len: int) -> None:
        p = self.packed(seq_len)
        if not p.x.shape[0]:
            raise DataError(f"{self.name}: none of its {p.dropped} examples has a token to learn "
                            "(with --mask-prompt: no completion or assistant tokens within "
                            "--seq)")  # fmt: skip

    def sampler(self, seq_len: int, seed: int, rank: int = 0, ranks: int = 1) -> PackedSampler:
        self.check(seq_len)
        return PackedSampler(self.packed(seq_len), seed, self.name, rank, ranks)

    def eval_windows(self, seq_len: int, cap: int = 0) -> Iterator[Window]:
        """Every window once, in order (cap > 0: the first cap)."""
        self.check(seq_len)
        p = self.packed(seq_len)
        for i in range(min(p.x.shape[0], cap) if cap > 0 else p.x.shape[0]):
            yield p.x[i], p.y[i]

    def summary(self, seq_len: int) -> str:
        p = self.packed(seq_len)
        parts = [f"{p.examples:,} examples in {p.x.shape[0]:,} windows"]
        if p.truncated:
            parts.append(f"{p.truncated:,} truncated to --seq")
        if p.dropped:
            parts.append(f"{p.dropped:,} without a token to learn dropped")
        if self.skipped:
            parts.append(f"{self.skipped:,} bad records skipped")
        return ", ".join(parts) + f"; {p.loss_fraction:.0%} of targets with loss"


class PackedSampler:
    """The windows in a seeded PCG64 permutation per epoch, resumable bit-identically.

    The global sequence is epoch 0's permutation, then epoch 1's, ...: each next() draws `ranks`
    windows of it and returns the `rank`-th (as WindowSampler does)."""

    def __init__(self, packed: Packed, seed: int, name: str, rank: int = 0,
                 ranks: int = 1) -> None:  # fmt: skip
        self.packed, self.name, self.rank, self.ranks = packed, name, rank, ranks
        self.n = packed.x.shape[0]
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.epoch, self.pos = -1, self.n  # the first draw starts epoch 0
        self.start: dict = self.rng.bit_generator.state  # the RNG before this epoch's permutation
        self.order = np.arange(0)  # [n] this epoch's window order

    def _draw(self) -> int:
        if self.pos == self.n:
            self.start = self.rng.bit_generator.state
            self.order = self.rng.permutation(self.n)
            self.epoch, self.pos = self.epoch + 1, 0
        self.pos += 1
        return int(self.order[self.pos - 1])

    def next(self) -> Window:
        """(x, y) int32 [S] each: this rank's window of the next group of `ranks`."""
        i = [self._draw() for _ in range(self.ranks)][self.rank]
        return self.packed.x[i], self.packed.y[i]

    def state(self) -> dict:
        return {"kind": "packed", "windows": self.n, "epoch": self.epoch, "pos": self.pos,
                "rng": self.start}  # fmt: skip

    def set_state(self, state: dict) -> None:
        if state.get("kind") != "packed":
            raise DataError(f"{self.name}: the run was trained on a token stream, not on packed "
                            "examples (JSONL); pass its --data")  # fmt: skip
        if state["windows"] != self.n:
            raise DataError(f"{self.name}: the run was trained on {state['windows']:,} windows, "
                            f"this data packs into {self.n:,}; the data or its tokenizer "
                            "changed")  # fmt: skip
        self.rng.bit_generator.state = state["rng"]
        self.start = self.rng.bit_generator.state
        self.epoch, self.pos = state["epoch"], state["pos"]
        if self.epoch >= 0:  # the permutation the saved position is in
            self.order = self.rng.permutation(self.n)
