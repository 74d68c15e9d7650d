"""Orphan L2 windows placed at their guest base from the claims found in their clusters.

A window maps ``span`` guest bytes at a base that is a multiple of ``span``. A disk-frame claim fixes the
base directly (base = position - at); a file-system-frame claim does once the frame's origin O (where the
file system starts on the disk) is known (base = O + position - at). Origins come from a placed window or
a known claim that holds a claim of the frame (O = guest offset - position), or, failing that, from the
candidates: the partition starts of the partition tables known or placed, and 0 (a file system on the
whole disk: only when no partition table is known, or when the disk's size leaves less than 1 MiB beside
the file system). A candidate is taken only when it is the only one under which every window holding
claims of the frame gets one aligned, open, unclaimed slot inside the file system (or its partition).

Every determined claim of a window must give the same base; two windows never share a slot. Conflicts
leave the windows involved unplaced: inside a window at once; across windows the solve starts over
without them (at most len(windows) + 1 times), so a window placed first is not kept against a second that
claims its slot. Each solve runs rounds until nothing changes, at most len(windows) + 1.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .claim import Claim

WHOLE_DISK_SLACK = 1 << 20


@dataclass(frozen=True)
class Placement:
    """Window ``key`` goes at guest ``base`` (= ``slot`` * span); ``evidence`` names the claim that fixed it."""

    key: int
    base: int
    slot: int
    evidence: str


@dataclass
class Solution:
    """``placed`` and ``unplaced`` (the reason) by window key, the frame origins resolved, the disk's size
    when a GPT header or protective MBR (known or in a placed window) states it and all such agree."""

    placed: dict[int, Placement] = field(default_factory=dict)
    unplaced: dict[int, str] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    disk_size: int | None = None


class _Restart(Exception):
    def __init__(self, bans: dict[int, str]):
        super().__init__("restart")
        self.bans = bans


class _Solve:
    def __init__(self, windows, span, virtual_size, known, is_open, bans):
        self.windows, self.span, self.vsize, self.is_open = windows, span, virtual_size, is_open
        self.banned: dict[int, str] = dict(bans)
        self.placed: dict[int, Placement] = {}
        self.owner: dict[int, int] = {}
        self.frames: dict[str, int] = {}
        self.frame_note: dict[str, str] = {}
        self.bad_frames: dict[str, str] = {}
        self.partitions: dict[int, int] = {}
        self.tables = False
        self.sizes: dict[str, int] = defaultdict(int)
        self.disk_sizes: list[tuple[bool, int]] = []
        for claims in windows.values():
            for c in claims:
                self.sizes[c.frame] = max(self.sizes[c.frame], c.size)
        self._learn(known, lambda c: c.at, "known guest data")

    # what placed windows and known claims teach
    def _learn(self, claims: Iterable[Claim], guest: Callable[[Claim], int], source: str) -> None:
        derived: dict[str, set[int]] = defaultdict(set)
        for c in claims:
            if c.frame == "disk":
                if c.partitions or c.what.startswith(("MBR", "protective MBR", "GPT")):
                    self.tables = True
                for start, length in c.partitions:
                    self.partitions[start] = max(self.partitions.get(start, 0), length)
                if c.size:
                    self.disk_sizes.append((c.what.startswith("GPT"), c.size))
            elif c.frame not in self.frames:
                derived[c.frame].add(guest(c) - c.position)
        for frame, origins in derived.items():
            if frame in self.bad_frames:
                continue
            if len(origins) == 1 and min(origins) >= 0:
                self.frames[frame] = min(origins)
                self.frame_note[frame] = source
            else:
                shown = ", ".join(f"{o:#x}" for o in sorted(origins))
                self.bad_frames[frame] = f"frame {frame}: origins disagree ({shown})"

    def _base_ok(self, base: int) -> str | None:
        """Why ``base`` cannot be a window's base, or None."""
        if base < 0 or base % self.span:
            return f"base {base:#x} is not a non-negative multiple of the span {self.span:#x}"
        if self.vsize is not None and base >= self.vsize:
            return f"base {base:#x} is past the virtual size {self.vsize:#x}"
        if not self.is_open(base // self.span):
            return f"slot {base // self.span} is not open (already mapped)"
        return None

    def _limit(self, frame: str, origin: int) -> int:
        return self.sizes.get(frame, 0) or self.partitions.get(origin, 0)

    def _determined(self, claims: list[Claim], extra: dict[str, int] | None = None):
        """(base, claim) for each claim whose frame is known; with ``extra`` origins tried on top."""
        out = []
        for c in claims:
            if c.frame == "disk":
                out.append((c.position - c.at, c))
            else:
                origin = (extra or {}).get(c.frame, self.frames.get(c.frame))
                if origin is not None and c.frame not in self.bad_frames:
                    out.append((origin + c.position - c.at, c))
        return out

    def _judge(self, claims: list[Claim], extra: dict[str, int] | None = None):
        """(base, evidence claim, None) when the determined claims agree on a good base; (None, None, reason)
        on a conflict; (None, None, None) when nothing is determined."""
        det = self._determined(claims, extra)
        if not det:
            return None, None, None
        bases = sorted({b for b, _ in det})
        if len(bases) > 1:
            first = {b: c for b, c in reversed(det)}
            shown = "; ".join(f"{first[b].what} ({first[b].frame}) says base {b:#x}" for b in bases[:3])
            return None, None, f"claims disagree: {shown}"
        base = bases[0]
        for b, c in det:
            if c.frame != "disk":
                origin = (extra or {}).get(c.frame, self.frames.get(c.frame))
                limit = self._limit(c.frame, origin)
                if limit and not origin <= base + c.at < origin + limit:
                    return None, None, f"{c.what} at guest {base + c.at:#x} lies outside {c.frame} " \
                                       f"[{origin:#x}, {origin + limit:#x})"
        why = self._base_ok(base)
        if why:
            return None, None, why
        strongest = next((c for _, c in det if c.frame == "disk"), det[0][1])
        return base, strongest, None

    def _open_windows(self):
        return [k for k in self.windows if k not in self.placed and k not in self.banned]

    def _place_round(self) -> bool:
        proposals: dict[int, list[tuple[int, int, Claim]]] = defaultdict(list)
        for key in self._open_windows():
            base, claim, why = self._judge(self.windows[key])
            if why:
                self.banned[key] = why
            elif base is not None:
                proposals[base // self.span].append((key, base, claim))
        restart: dict[int, str] = {}
        fresh = []
        for slot, props in sorted(proposals.items()):
            keys = [k for k, _, _ in props]
            if slot in self.owner:
                keys.append(self.owner[slot])
            if len(keys) > 1:
                why = f"slot {slot} claimed by {len(keys)} windows ({', '.join(f'{k:#x}' for k in sorted(keys))})"
                if slot in self.owner:
                    restart.update({k: why for k in keys})
                else:
                    self.banned.update({k: why for k in keys})
                continue
            key, base, claim = props[0]
            fresh.append(key)
            self.owner[slot] = key
            self.placed[key] = Placement(key, base, slot, f"{claim.what} at guest {base + claim.at:#x}")
        if restart:
            raise _Restart(restart)
        for key in fresh:
            base = self.placed[key].base
            self._learn(self.windows[key], lambda c, b=base: b + c.at, f"window {key:#x}")
        return bool(fresh)

    def _candidates(self, frame: str) -> list[int]:
        cands = set(self.partitions)
        size = self.sizes.get(frame, 0)
        whole = self.vsize is not None and size and 0 <= self.vsize - size < WHOLE_DISK_SLACK
        if not self.tables or whole:
            cands.add(0)
        return sorted(cands)

    def _fits(self, frame: str, origin: int, holders: list[int]) -> bool:
        slots = set()
        for key in holders:
            base, _, why = self._judge(self.windows[key], {frame: origin})
            if why or base is None:
                return False
            slot = base // self.span
            if slot in self.owner or slot in slots:
                return False
            slots.add(slot)
        return True

    def _resolve_round(self) -> bool:
        holders: dict[str, list[int]] = defaultdict(list)
        for key in self._open_windows():
            for frame in {c.frame for c in self.windows[key]}:
                if frame != "disk" and frame not in self.frames and frame not in self.bad_frames:
                    holders[frame].append(key)
        changed = False
        for frame, keys in sorted(holders.items()):
            cands = self._candidates(frame)
            fits = [o for o in cands if self._fits(frame, o, keys)]
            if len(fits) == 1:
                self.frames[frame] = fits[0]
                self.frame_note[frame] = "whole disk" if fits[0] == 0 and fits[0] not in self.partitions \
                    else f"partition at {fits[0]:#x}"
                changed = True
            elif fits:
                self.frame_note[frame] = f"origin of {frame} ambiguous: " + ", ".join(f"{o:#x}" for o in fits)
            else:
                shown = ", ".join(f"{o:#x}" for o in cands) or "none"
                self.frame_note[frame] = f"origin of {frame} unresolved: no candidate fits (candidates {shown})"
        return changed

    def run(self) -> None:
        for _ in range(len(self.windows) + 1):
            placed = self._place_round()
            resolved = self._resolve_round()
            if not placed and not resolved:
                break

    def reasons(self) -> dict[int, str]:
        out = {}
        for key in self.windows:
            if key in self.placed:
                continue
            if key in self.banned:
                out[key] = self.banned[key]
                continue
            frames = sorted({c.frame for c in self.windows[key]})
            if not frames:
                out[key] = "no self-locating structure"
                continue
            notes = [self.bad_frames.get(f) or self.frame_note.get(f) or f"origin of {f} unresolved"
                     for f in frames if f != "disk"]
            out[key] = "; ".join(notes) or "not placed"
        return out

    def disk_size(self) -> int | None:
        gpt = {s for is_gpt, s in self.disk_sizes if is_gpt}
        sizes = gpt or {s for _, s in self.disk_sizes}
        return sizes.pop() if len(sizes) == 1 else None


def place_windows(windows: dict[int, list[Claim]], span: int, virtual_size: int | None,
                  known: Iterable[Claim] = (), is_open: Callable[[int], bool] = lambda slot: True) -> Solution:
    """Place orphan L2 windows from their claims.

    ``windows``: window key (the L2 table's host offset) -> the claims found in its clusters, ``at`` being
    the offset in the window (entry index * cluster size + offset in the cluster). ``known``: claims whose
    guest offset is known, ``at`` being that guest offset. A base is a multiple of ``span``, >= 0, below
    ``virtual_size`` when given, its slot (base // span) open by ``is_open`` and taken by one window only.
    """
    if span <= 0:
        raise ValueError(f"span {span} must be positive")
    known = list(known)
    bans: dict[int, str] = {}
    for _ in range(len(windows) + 1):
        solve = _Solve(windows, span, virtual_size, known, is_open, bans)
        try:
            solve.run()
        except _Restart as again:
            bans.update(again.bans)
            continue
        return Solution(dict(solve.placed), solve.reasons(), dict(solve.frames), solve.disk_size())
    raise AssertionError("unreachable: each restart bans a new window")
