"""megatron_patch.io: a file or directory appears under its final name only when complete."""
import json
import os

import pytest

from megatron_patch import io


class Boom(RuntimeError):
    pass


def _leftovers(directory):
    return sorted(p for p in os.listdir(directory) if p.startswith("."))


def test_write_helpers_and_permissions(tmp_path):
    io.write_text(str(tmp_path / "sub" / "a.txt"), "hello\n")  # parent directories are made
    assert (tmp_path / "sub" / "a.txt").read_text() == "hello\n"
    io.write_lines(str(tmp_path / "b.jsonl"), (f"{i}\n" for i in range(3)))
    assert (tmp_path / "b.jsonl").read_text() == "0\n1\n2\n"
    io.write_json(str(tmp_path / "c.json"), {"x": [1, 2]})
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2]}
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(tmp_path / "c.json").st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    assert _leftovers(tmp_path) == []


def test_failing_writer_leaves_no_file(tmp_path):
    path = tmp_path / "out.txt"
    with pytest.raises(Boom):
        with io.atomic_path(str(path)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise Boom()
    assert not path.exists() and _leftovers(tmp_path) == []


def test_failing_writer_keeps_the_previous_file(tmp_path):
    path = tmp_path / "out.txt"
    io.write_text(str(path), "old\n")

    def lines():
        yield "new 1\n"
        raise Boom()

    with pytest.raises(Boom):
        io.write_lines(str(path), lines())
    assert path.read_text() == "old\n" and _leftovers(tmp_path) == []


def test_atomic_path_suffix_for_writers_that_insist(tmp_path):
    np = pytest.importorskip("numpy")
    with io.atomic_path(str(tmp_path / "a.npy"), suffix=".npy") as tmp:
        assert tmp.endswith(".npy")
        np.save(tmp, np.arange(3))
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    target = tmp_path / "model"
    with io.atomic_dir(str(target)) as tmp:
        assert not target.exists()  # nothing under the final name while it is written
        (tmp_path / tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"

    with pytest.raises(FileExistsError):  # a non-empty directory is kept unless overwrite
        with io.atomic_dir(str(target)):
            pass

    with pytest.raises(Boom):  # a failed overwrite leaves the previous directory as it was
        with io.atomic_dir(str(target), overwrite=True) as tmp:
            (tmp_path / tmp / "b").write_text("2")
            raise Boom()
    assert sorted(os.listdir(target)) == ["a"] and _leftovers(tmp_path) == []

    with io.atomic_dir(str(target), overwrite=True) as tmp:  # a complete one replaces it whole
        (tmp_path / tmp / "b").write_text("2")
        assert (target / "a").exists()
    assert sorted(os.listdir(target)) == ["b"] and _leftovers(tmp_path) == []


def test_save_array_is_atomic_and_memory_mappable(tmp_path, monkeypatch):
    import numpy as np

    path = str(tmp_path / "sub" / "a.npy")
    io.save_array(path, np.arange(5, dtype=np.int64))
    assert np.load(path, mmap_mode="r").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):  # object arrays would need pickle: refused, nothing replaced
        io.save_array(path, np.array([{"a": 1}], dtype=object))
    assert np.load(path).tolist() == [0, 1, 2, 3, 4] and _leftovers(tmp_path / "sub") == []


def test_index_cache_writes_through_io(tmp_path, monkeypatch):
    """data/cache.py saves its arrays and description with io's atomic writers."""
    import numpy as np

    from megatron_patch.data import cache

    written = []
    for name in ("save_array", "write_text"):
        real = getattr(io, name)
        monkeypatch.setattr(io, name, lambda path, obj, _real=real: (written.append(os.path.basename(path)),
                                                                   _real(path, obj))[1])
    out = cache.cached_arrays(str(tmp_path / "c"), {"kind": "t", "x": 1}, ("a", "b"),
                              lambda: {"a": np.arange(3), "b": np.ones(2)})
    assert out["a"].tolist() == [0, 1, 2] and out["b"].tolist() == [1.0, 1.0]
    assert sorted(n.split("-", 1)[1] for n in written) == ["t-a.npy", "t-b.npy", "t-description.json"]
    assert _leftovers(tmp_path / "c") == []
