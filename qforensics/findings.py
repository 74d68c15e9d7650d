"""Findings: what the model and the checks say about an image, as plain data.

A finding never prints and never raises; the CLI, JSON and HTML renderers
only render lists of findings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum


class Severity(StrEnum):
    """How bad a finding is; the order is the order of gravity."""

    CORRUPTION = "corruption"
    LEAK = "leak"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Finding:
    """One fact about the image that an analyst should know.

    ``code`` is stable and machine-readable (``header.cluster_bits_unsupported``);
    ``message`` names the field, its value and the limit. ``qemu_message`` is
    the text QEMU 7.2 prints when it refuses to open the image for this reason
    (None when QEMU accepts it), so a refusal can be compared with qemu's.
    ``qemu_counts`` says which `qemu-img check` counter the finding stands for;
    findings beyond qemu leave it None, so qemu's numbers stay comparable.
    """

    code: str
    severity: Severity
    message: str
    structure: str
    host_offset: int | None = None
    guest_offset: int | None = None
    qemu_message: str | None = None
    qemu_io_only: bool = False  # qemu refuses only a full open (check, convert, qemu-io), not `qemu-img info`
    qemu_check: str | None = None  # the line `qemu-img check` prints for the same fault
    qemu_counts: str | None = None  # the qemu-img check counter it adds to: corruptions, leaks, check-errors
    repeat: int = 1  # faults it stands for: a ".more" summary stands for those past the listing cap

    @property
    def refused_by_qemu(self) -> bool:
        return self.qemu_message is not None

    def to_json(self) -> dict:
        data = asdict(self)
        data["severity"] = str(self.severity)
        return data

    def one_line(self) -> str:
        where = self.structure if self.host_offset is None else f"{self.structure} at 0x{self.host_offset:x}"
        return f"{where}: {self.message}"
