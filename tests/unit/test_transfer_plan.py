"""Scanning sources (allowed_sources, symlinks) and planning copies and mirrors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from boxd.transfer.plan import MassDeleteRefused, RemoteFile, make_plan
from boxd.transfer.scan import LocalEntry, SourceError, check_source, scan


def tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def test_scan_lists_regular_files_sorted_with_their_directories(tmp_path: Path) -> None:
    tree(tmp_path / "repo", {"config": b"c", "data/00/aa": b"1", "data/01/bb": b"22", "keys/k": b"k"})
    result = scan(tmp_path / "repo", [tmp_path])
    assert [e.rel for e in result.files] == ["config", "data/00/aa", "data/01/bb", "keys/k"]
    assert result.dirs == ["data", "data/00", "data/01", "keys"]
    assert result.files[2].size == 2


def test_a_single_file_source_is_one_entry_under_its_own_name(tmp_path: Path) -> None:
    tree(tmp_path, {"archive.tar": b"x" * 10})
    assert [(e.rel, e.size) for e in scan(tmp_path / "archive.tar", [tmp_path]).files] == [("archive.tar", 10)]


def test_symlinks_are_followed_only_inside_allowed_sources(tmp_path: Path) -> None:
    allowed = tmp_path / "backups"
    tree(allowed, {"repo/config": b"c", "other/shared": b"s"})
    tree(tmp_path, {"secret": b"no"})
    os.symlink(tmp_path / "secret", allowed / "repo" / "leak")
    os.symlink(allowed / "other" / "shared", allowed / "repo" / "inside")
    os.mkfifo(allowed / "repo" / "fifo")
    result = scan(allowed / "repo", [allowed])
    assert [e.rel for e in result.files] == ["config", "inside"]
    assert any(line.startswith("leak: symlink pointing outside") for line in result.left_out)
    assert any(line.startswith("fifo: not a regular file") for line in result.left_out)


@pytest.mark.parametrize(
    ("source", "words"),
    [("relative/path", "absolute"), ("/backups/../etc", "'..'"), ("/nonexistent-boxd-test", "does not exist")],
)
def test_bad_sources_are_refused_naming_the_field(source: str, words: str) -> None:
    with pytest.raises(SourceError, match=words) as err:
        check_source(Path(source), [Path("/")])
    assert err.value.field == "source"


def test_a_source_outside_allowed_sources_or_through_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "allowed").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "allowed" / "escape")
    with pytest.raises(SourceError, match=r"not under daemon\.allowed_sources"):
        check_source(tmp_path / "elsewhere", [tmp_path / "allowed"])
    with pytest.raises(SourceError, match=r"not under daemon\.allowed_sources"):
        check_source(tmp_path / "allowed" / "escape", [tmp_path / "allowed"])
    with pytest.raises(SourceError, match="allowed_sources is empty"):
        check_source(tmp_path / "allowed", [])


def entry(rel: str, size: int) -> LocalEntry:
    return LocalEntry(rel, Path("/x") / rel, size, 0, 0)


def test_copy_uploads_new_and_changed_and_skips_identical_hashing_only_same_sizes() -> None:
    local = [entry("a", 1), entry("b", 2), entry("c", 3), entry("d", 4)]
    remote = [
        RemoteFile("A", "1", 1, "sha-a"),
        RemoteFile("b", "2", 2, "old"),
        RemoteFile("c", "3", 30, "x"),
        RemoteFile("gone", "9", 1, "g"),
    ]
    hashed: list[str] = []

    def sha1(e: LocalEntry) -> str:
        hashed.append(e.rel)
        return {"a": "sha-a", "b": "new"}[e.rel]

    plan = make_plan(local, remote, mode="copy", max_delete_percent=50, local_sha1=sha1)
    assert [e.rel for e in plan.skip] == ["a"]
    assert [(e.rel, r.id if r else None) for e, r in plan.upload] == [("b", "2"), ("c", "3"), ("d", None)]
    assert plan.trash == [] and hashed == ["a", "b"]


def test_mirror_trashes_what_is_gone_locally_within_the_limit() -> None:
    remote = [RemoteFile(n, n, 1, "s") for n in ("a", "b", "c", "d")]
    plan = make_plan(
        [entry("a", 1), entry("b", 1), entry("c", 1)],
        remote,
        mode="mirror",
        max_delete_percent=25,
        local_sha1=lambda e: "s",
    )
    assert [r.rel for r in plan.trash] == ["d"]


def test_mirror_refuses_a_mass_delete_and_deletes_nothing() -> None:
    remote = [RemoteFile(n, n, 1, "s") for n in ("a", "b", "c", "d")]
    with pytest.raises(MassDeleteRefused, match="is the backup disk mounted"):
        make_plan([], remote, mode="mirror", max_delete_percent=50, local_sha1=lambda e: "s")


def test_local_names_differing_only_by_case_are_reported_not_uploaded_twice() -> None:
    plan = make_plan(
        [entry("Pack", 1), entry("pack", 1)], [], mode="copy", max_delete_percent=50, local_sha1=lambda e: "s"
    )
    assert [e.rel for e, _ in plan.upload] == ["Pack"] and plan.clashes == ["pack (differs only by case from Pack)"]
