"""What an import did with every file: counts per split and label, files skipped with the reason,
files ignored by extension, byte-identical duplicates (printed, and written beside the data as
import_report.json)."""

from __future__ import annotations

import dataclasses

from dcjax.data.datasets import REPORT_FILE

UNLABELED = "(unlabeled)"  # the count key of images without a label


@dataclasses.dataclass
class ImportReport:
    """What an import wrote, what it could not read, and what it left aside as not images."""

    name: str
    path: str = ""
    source: str = ""
    layout: str = ""
    class_names: list[str] = dataclasses.field(default_factory=list)
    counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # split -> class -> n
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file, reason)
    ignored: dict[str, int] = dataclasses.field(default_factory=dict)  # extension -> files
    # (file, the earlier file it is byte-identical to): imported all the same, listed
    duplicates: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def count(self, split: str, label: str | None) -> None:
        per_class = self.counts.setdefault(split, {})
        key = UNLABELED if label is None else label
        per_class[key] = per_class.get(key, 0) + 1

    def ignore(self, kind: str) -> None:
        self.ignored[kind] = self.ignored.get(kind, 0) + 1

    def total(self, split: str | None = None) -> int:
        splits = [split] if split else list(self.counts)
        return sum(sum(self.counts.get(s, {}).values()) for s in splits)

    def format(self) -> str:
        lines = [f"dataset {self.name!r} from {self.source}"
                 + (f" (layout {self.layout})" if self.layout else ""), f"  written to {self.path}"]
        for split in sorted(self.counts):
            per_class = self.counts[split]
            if set(per_class) == {UNLABELED}:
                lines.append(f"  {split}: {self.total(split)} images, unlabeled")
                continue
            lines.append(f"  {split}: {self.total(split)} images in {len(per_class)} classes")
            for label in self.class_names:
                if label in per_class:
                    lines.append(f"    {label:<24s} {per_class[label]}")
        lines.append(f"  skipped: {len(self.skipped)} file(s) that could not be imported")
        for path, reason in self.skipped:
            lines.append(f"    {path}: {reason}")
        if self.duplicates:
            lines.append(f"  duplicates: {len(self.duplicates)} file(s) byte-identical to another "
                         f"(imported all the same; all listed in {REPORT_FILE})")
            for path, first in self.duplicates[:10]:
                lines.append(f"    {path} = {first}")
            if len(self.duplicates) > 10:
                lines.append(f"    ... and {len(self.duplicates) - 10} more")
        if self.ignored:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.ignored.items()))
            lines.append(f"  ignored: {sum(self.ignored.values())} file(s) that are not images by "
                         f"name ({kinds})")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
