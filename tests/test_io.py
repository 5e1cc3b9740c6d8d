import pytest

from diji.io import atomic_open, atomic_write_json, publish_dir, sha256_bytes, sha256_file


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write('{"v": 2, "half')
        raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith('{\n  "v": 1')
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_publish_dir_replaces_whole_directory(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp = tmp_path / ".ckpt.tmp"
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    publish_dir(tmp, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_sha256_helpers_agree(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"diji" * 1000)
    assert sha256_file(p) == sha256_bytes(b"diji" * 1000)


def test_written_artifacts_get_the_umask_mode_not_0600(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "m.json", {})
        assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)
