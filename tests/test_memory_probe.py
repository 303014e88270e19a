"""MemoryProbe on fake cgroup v2 and v1 trees, on the host fallback and on this machine."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import psutil
import pytest

import buttress
from _cgroup_trees import V1_UNLIMITED, CgroupTree, GiB, MiB, limited_v2
from buttress import MemoryProbe, memory_snapshot, testing
from buttress._memory_probe import default_probe


def host_total() -> int:
    return psutil.virtual_memory().total


# --- cgroup v2 -------------------------------------------------------------------------


def test_v2_limit_and_working_set(tmp_path: Path) -> None:
    tree = CgroupTree(tmp_path, 2, "/kubepods/pod1/ctr")
    tree.set(limit=GiB, usage=600 * MiB, inactive_file=100 * MiB, oom_kills=3)
    snap = tree.probe().read()
    assert snap.source == "cgroup-v2"
    assert snap.cgroup == "/kubepods/pod1/ctr"
    assert snap.limit == GiB
    assert snap.used == 500 * MiB  # the inactive page cache is left out, as the kubelet does
    assert snap.available == GiB - 500 * MiB
    assert snap.percent == pytest.approx(100 * 500 / 1024)
    assert snap.oom_kills == 3
    assert snap.rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.5)


def test_v2_without_a_limit_falls_back_to_the_host(tmp_path: Path) -> None:
    tree = CgroupTree(tmp_path, 2, "/user.slice/session-1.scope")
    tree.set(limit="max", usage=300 * MiB, inactive_file=0, oom_kills=1)
    tree.set("/user.slice", limit="max", usage=400 * MiB)
    snap = tree.probe().read()
    assert snap.source == "host"
    assert snap.cgroup is None
    assert snap.limit == host_total()
    assert snap.used + snap.available == snap.limit
    assert snap.oom_kills == 1  # still our cgroup's count


def test_v2_parent_limit_binds_when_the_child_has_none(tmp_path: Path) -> None:
    tree = CgroupTree(tmp_path, 2, "/kubepods/pod1/ctr")
    tree.set(limit="max", usage=300 * MiB, inactive_file=0)
    # The pod's usage includes a sidecar's, so the pod is where the room runs out.
    tree.set("/kubepods/pod1", limit=512 * MiB, usage=450 * MiB, inactive_file=50 * MiB)
    tree.set("/kubepods", limit="max", usage=GiB)
    snap = tree.probe().read()
    assert snap.source == "cgroup-v2"
    assert snap.cgroup == "/kubepods/pod1"
    assert (snap.used, snap.limit, snap.available) == (400 * MiB, 512 * MiB, 112 * MiB)


def test_v2_takes_the_level_with_least_room(tmp_path: Path) -> None:
    tree = CgroupTree(tmp_path, 2, "/a/b")
    tree.set(limit=GiB, usage=100 * MiB, inactive_file=0)  # 924 MiB left here
    tree.set("/a", limit=2 * GiB, usage=1900 * MiB, inactive_file=0)  # 148 MiB left here
    snap = tree.probe().read()
    assert snap.cgroup == "/a"
    assert snap.available == 148 * MiB


def test_v2_memory_high_counts_as_a_limit(tmp_path: Path) -> None:
    tree = CgroupTree(tmp_path, 2, "/app")
    tree.set(limit=GiB, high=768 * MiB, usage=512 * MiB, inactive_file=0)
    snap = tree.probe().read()
    assert snap.limit == 768 * MiB
    tree.set(limit="max", high="max")
    assert tree.probe().read().source == "host"


def test_v2_limit_above_the_host_memory_is_no_limit(tmp_path: Path) -> None:
    tree = CgroupTree(tmp_path, 2, "/app")
    tree.set(limit=host_total() * 4, usage=MiB, inactive_file=0)
    assert tree.probe().read().source == "host"


def test_v2_missing_stat_and_events(tmp_path: Path) -> None:
    tree = CgroupTree(tmp_path, 2, "/app")
    tree.set(limit=GiB, usage=256 * MiB)
    snap = tree.probe().read()
    assert snap.used == 256 * MiB
    assert snap.oom_kills is None


def test_v2_inside_a_cgroup_namespace(tmp_path: Path) -> None:
    # Only the container's own cgroup is mounted, and /proc/self/cgroup says "/".
    tree = CgroupTree(tmp_path, 2, "/")
    tree.set(limit=GiB, usage=100 * MiB, inactive_file=0)
    snap = tree.probe().read()
    assert (snap.source, snap.cgroup, snap.limit) == ("cgroup-v2", "/", GiB)


def test_v2_host_path_over_a_container_mount(tmp_path: Path) -> None:
    # /proc/self/cgroup names the host's path but only part of the tree is mounted.
    tree = CgroupTree(tmp_path, 2, "/ctr")
    tree.set(limit=GiB, usage=100 * MiB, inactive_file=0)
    tree.set("/", limit=512 * MiB, usage=500 * MiB, inactive_file=0)
    tree.proc.write_text("0::/kubepods/burstable/pod9/ctr\n")
    probe = tree.probe()
    assert probe.cgroup_directory == tree.mount / "ctr"
    snap = probe.read()
    assert snap.cgroup == "/kubepods/burstable/pod9"  # the mount root, named as the host names it
    assert snap.available == 12 * MiB


# --- cgroup v1 -------------------------------------------------------------------------


def test_v1_limit_and_working_set(tmp_path: Path) -> None:
    tree = CgroupTree(tmp_path, 1, "/docker/abc123")
    tree.set(limit=2 * GiB, usage=GiB, inactive_file=256 * MiB, oom_kills=4)
    probe = tree.probe()
    assert probe.cgroup_version == 1  # chosen over the hybrid layout's v2 hierarchy
    snap = probe.read()
    assert snap.source == "cgroup-v1"
    assert snap.cgroup == "/docker/abc123"
    assert (snap.used, snap.limit) == (768 * MiB, 2 * GiB)
    assert snap.percent == pytest.approx(37.5)
    assert snap.oom_kills == 4


def test_v1_unlimited_value_falls_back_to_the_host(tmp_path: Path) -> None:
    tree = CgroupTree(tmp_path, 1, "/process_api/d53a")
    tree.set(limit=V1_UNLIMITED, usage=4 * MiB, inactive_file=0, oom_kills=0)
    tree.set("/process_api", limit=V1_UNLIMITED, usage=8 * MiB)
    tree.set("/", limit=V1_UNLIMITED, usage=GiB)
    snap = tree.probe().read()
    assert (snap.source, snap.limit, snap.oom_kills) == ("host", host_total(), 0)


def test_v1_parent_limit(tmp_path: Path) -> None:
    tree = CgroupTree(tmp_path, 1, "/kubepods/pod1/ctr")
    tree.set(limit=V1_UNLIMITED, usage=100 * MiB, inactive_file=0)
    tree.set("/kubepods/pod1", limit=300 * MiB, usage=200 * MiB, inactive_file=0)
    snap = tree.probe().read()
    assert (snap.cgroup, snap.limit, snap.used) == ("/kubepods/pod1", 300 * MiB, 200 * MiB)


def test_v1_stat_without_total_inactive_file(tmp_path: Path) -> None:
    tree = CgroupTree(tmp_path, 1, "/job")
    tree.set(limit=GiB, usage=500 * MiB)
    tree.write("/job", "memory.stat", "cache 10\ninactive_file 104857600\n")
    assert tree.probe().read().used == 400 * MiB


def test_v1_co_mounted_controllers(tmp_path: Path) -> None:
    tree = CgroupTree(tmp_path, 1, "/job")
    tree.set(limit=GiB, usage=100 * MiB)
    tree.mount.rename(tree.root / "memory,cpu")
    assert tree.probe().read().limit == GiB


# --- the host fallback ------------------------------------------------------------------


def test_host_without_proc_cgroup(tmp_path: Path) -> None:
    probe = MemoryProbe(tmp_path, proc_cgroup=tmp_path / "missing")
    assert probe.cgroup_version is None
    snap = probe.read()
    host = psutil.virtual_memory()
    assert snap.source == "host"
    assert snap.limit == host.total
    assert snap.oom_kills is None
    assert abs(snap.available - host.available) < host.total * 0.1
    assert 0 < snap.percent < 100


def test_host_without_a_memory_hierarchy(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/somewhere\n0::/\n")  # nothing is mounted under tmp_path
    assert MemoryProbe(tmp_path, proc_cgroup=proc).read().source == "host"


def test_this_machine() -> None:
    """The real probe works where the tests run, whatever cgroups this machine has."""
    probe = MemoryProbe()
    snap = probe.read()
    assert snap.source in ("cgroup-v2", "cgroup-v1", "host")
    assert 0 < snap.used <= snap.limit
    assert snap.used + snap.available == snap.limit or snap.source == "host"
    assert 0 < snap.percent <= 100
    assert snap.rss > 0
    if os.path.exists("/proc/self/cgroup") and probe.cgroup_version is not None:
        directory = probe.cgroup_directory
        assert directory is not None
        assert directory.is_dir()
        usage = "memory.current" if probe.cgroup_version == 2 else "memory.usage_in_bytes"
        assert (directory / usage).exists() or directory == Path("/sys/fs/cgroup")
    if snap.source == "host":
        assert snap.limit == host_total()
    assert memory_snapshot().source == snap.source


# --- root from the environment, rediscovery, caching -----------------------------------


def test_root_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.path.exists("/proc/self/cgroup"):
        pytest.skip("needs /proc/self/cgroup")
    # The real /proc/self/cgroup names paths that do not exist in the fake tree, so the
    # probe settles on its root, as it does in a container's own cgroup namespace.
    tree = CgroupTree(tmp_path, 2, "/")
    tree.set(limit=GiB, usage=GiB // 4, inactive_file=0)
    monkeypatch.setenv("BUTTRESS_CGROUP_ROOT", str(tree.root))
    assert MemoryProbe().cgroup_root == tree.root
    assert default_probe().cgroup_root == tree.root
    snap = buttress.memory_snapshot()
    assert (snap.source, snap.limit, snap.percent) == ("cgroup-v2", GiB, 25.0)
    assert memory_snapshot(cgroup_root=tree.root).limit == GiB


def test_moved_cgroup_is_found_again(tmp_path: Path) -> None:
    tree = CgroupTree(tmp_path, 2, "/old")
    tree.set(limit=GiB, usage=0, inactive_file=0)
    tree.set("/new", limit=512 * MiB, usage=0, inactive_file=0)
    probe = tree.probe()
    assert probe.read().limit == GiB
    shutil.rmtree(tree.mount / "old")
    tree.proc.write_text("0::/new\n")
    snap = probe.read()
    assert (snap.cgroup, snap.limit) == ("/new", 512 * MiB)


def test_garbled_files_fall_back_to_the_host_once_and_for_all(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = limited_v2(tmp_path)
    probe = tree.probe()
    assert probe.read().source == "cgroup-v2"
    tree.write("/app", "memory.current", "not a number\n")
    with caplog.at_level(logging.WARNING, logger="buttress.memory_guard"):
        assert probe.read().source == "host"
    assert "cannot read the memory cgroup" in caplog.text
    tree.set(usage=0)
    assert probe.read().source == "host"


def test_snapshot_reuses_a_reading_for_max_age(tmp_path: Path) -> None:
    tree = limited_v2(tmp_path, usage=100 * MiB)
    probe = tree.probe()
    with testing.testing_mode(testing.FakeClock(start=50.0)) as clock:
        first = probe.snapshot(max_age=0.05)
        tree.set(usage=900 * MiB)
        clock.advance(0.05)
        assert probe.snapshot(max_age=0.05) is first
        clock.advance(0.001)
        assert probe.snapshot(max_age=0.05).used == 900 * MiB
        assert probe.read() is probe.last


def test_snapshot_from_another_clock_is_not_reused(tmp_path: Path) -> None:
    tree = limited_v2(tmp_path, usage=100 * MiB)
    probe = tree.probe()
    with testing.testing_mode(testing.FakeClock(start=1000.0)):
        probe.read()
    tree.set(usage=200 * MiB)
    # A clock reading "earlier" than the reading's: the reading is not trusted.
    with testing.testing_mode(testing.FakeClock(start=0.0)):
        assert probe.snapshot(max_age=10.0).used == 200 * MiB


def test_snapshot_is_frozen(tmp_path: Path) -> None:
    snap = limited_v2(tmp_path).probe().read()
    with pytest.raises(AttributeError):
        snap.used = 1  # type: ignore[misc]


def test_a_forked_child_starts_with_empty_ledgers(tmp_path: Path) -> None:
    from buttress import _memory_probe

    probe = limited_v2(tmp_path).probe()
    probe.read()
    probe.reserved = 123
    lock = _memory_probe.LEDGER_LOCK
    try:
        _memory_probe._after_fork_in_child()  # what os.register_at_fork runs in the child
        assert probe.reserved == 0
        assert probe.last is None
        assert _memory_probe.LEDGER_LOCK is not lock  # a lock held at the fork is not inherited
    finally:
        _memory_probe.LEDGER_LOCK = lock


def test_a_cgroup_without_the_memory_controller_is_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = CgroupTree(tmp_path, 2, "/user.slice/session-1.scope")  # no memory.* files there
    tree.set("/user.slice", limit=GiB, usage=100 * MiB, inactive_file=0)
    with caplog.at_level(logging.WARNING):
        snap = tree.probe().read()
    assert (snap.source, snap.cgroup) == ("cgroup-v2", "/user.slice")
    assert caplog.records == []
