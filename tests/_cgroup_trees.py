"""Fake cgroup v2 and v1 trees in a temporary directory, for the memory guard's tests.

They are laid out as the kernel lays out ``/sys/fs/cgroup`` and ``/proc/self/cgroup``, and
the real :class:`buttress.MemoryProbe` reads them; tests change memory by rewriting files.
"""

from __future__ import annotations

from pathlib import Path

from buttress import MemoryProbe

KiB = 1024
MiB = 1024**2
GiB = 1024**3


class CgroupTree:
    """A cgroup hierarchy under ``root`` and the ``/proc/self/cgroup`` file naming ``own``."""

    def __init__(self, base: Path, version: int, own: str) -> None:
        self.version = version
        self.own = own
        self.root = base / "sys-fs-cgroup"
        self.proc = base / "proc-self-cgroup"
        self.mount = self.root if version == 2 else self.root / "memory"
        self.mount.mkdir(parents=True)
        if version == 2:
            (self.root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
            self.proc.write_text(f"0::{own}\n")
        else:
            # As systemd's hybrid layout has it: v1 controllers plus a v2 hierarchy
            # without the memory controller.
            (self.root / "unified").mkdir()
            (self.root / "unified" / "cgroup.controllers").write_text("hugetlb\n")
            self.proc.write_text(
                f"5:cpu,cpuacct:{own}\n4:memory:{own}\n1:name=systemd:{own}\n0::{own}\n"
            )
        self.directory(own)

    def directory(self, cgroup: str) -> Path:
        path = self.mount.joinpath(*[part for part in cgroup.split("/") if part])
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, cgroup: str, name: str, text: str) -> None:
        (self.directory(cgroup) / name).write_text(text)

    def set(
        self,
        cgroup: str | None = None,
        *,
        limit: int | str | None = None,
        high: int | str | None = None,
        usage: int | None = None,
        inactive_file: int | None = None,
        oom_kills: int | None = None,
    ) -> None:
        """Write one cgroup's memory files (``limit="max"`` or v1's huge value: none)."""
        cgroup = self.own if cgroup is None else cgroup
        v2 = self.version == 2
        if limit is not None:
            self.write(cgroup, "memory.max" if v2 else "memory.limit_in_bytes", f"{limit}\n")
        if high is not None:
            assert v2, "memory.high exists in cgroup v2 only"
            self.write(cgroup, "memory.high", f"{high}\n")
        if usage is not None:
            name = "memory.current" if v2 else "memory.usage_in_bytes"
            self.write(cgroup, name, f"{usage}\n")
        if inactive_file is not None:
            if v2:
                stat = f"anon 1000\nfile 2000\nactive_file 10\ninactive_file {inactive_file}\n"
            else:
                stat = (
                    f"cache 2000\nrss 1000\ninactive_file 7\ntotal_inactive_file {inactive_file}\n"
                )
            self.write(cgroup, "memory.stat", stat)
        if oom_kills is not None:
            if v2:
                text = f"low 0\nhigh 0\nmax 3\noom 2\noom_kill {oom_kills}\n"
                self.write(cgroup, "memory.events", text)
            else:
                text = f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kills}\n"
                self.write(cgroup, "memory.oom_control", text)

    def probe(self) -> MemoryProbe:
        return MemoryProbe(self.root, proc_cgroup=self.proc)


#: The value cgroup v1 reports for "no limit" (LONG_MAX rounded down to a page).
V1_UNLIMITED = 9223372036854771712


def limited_v2(base: Path, *, limit: int = GiB, usage: int = 0) -> CgroupTree:
    """A container cgroup ``/app`` with a limit and no page cache."""
    tree = CgroupTree(base, 2, "/app")
    tree.set(limit=limit, usage=usage, inactive_file=0, oom_kills=0)
    return tree
