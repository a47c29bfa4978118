"""core.tensor_cache: the one sharded cache under the teacher and the curation embedding caches, and its
damage policy (a damaged shard is skipped with one warning naming it, deleted and recomputed; a folder
that cannot be used or written degrades to no cache with one warning; concurrent writers never corrupt
each other)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from core.tensor_cache import TensorCache, key_array, shard_bytes

ROOT = Path(__file__).resolve().parents[1]


def open_cache(folder: Path, framework: str = "numpy") -> TensorCache:
    return TensorCache(folder, label="test cache", hint="use another folder", framework=framework)


def keys_of(*names: str) -> np.ndarray:
    import hashlib

    return key_array([hashlib.sha1(n.encode()).digest() for n in names])


def rows(n: int, start: float = 0.0) -> np.ndarray:
    return np.arange(start, start + n * 3, dtype=np.float32).reshape(n, 3)


def test_rows_come_back_by_key_across_shards_and_reopening(tmp_path):
    cache = open_cache(tmp_path)
    cache.write(keys_of("a", "b"), {"v": rows(2)})
    cache.write(keys_of("c"), {"v": rows(1, 100)})
    for c in (cache, open_cache(tmp_path)):
        wanted = keys_of("c", "x", "a")
        assert c.contains(wanted).tolist() == [True, False, True] and len(c) == 3
        got = {int(i): v for positions, part in c.read(wanted) for i, v in zip(positions, part["v"])}
        assert sorted(got) == [0, 2]
        np.testing.assert_array_equal(got[0], rows(1, 100)[0])
        np.testing.assert_array_equal(got[2], rows(2)[0])


def test_a_torch_cache_keeps_bfloat16_and_refuses_its_nan(tmp_path):
    cache = open_cache(tmp_path, "torch")
    value = torch.randn(2, 4, dtype=torch.bfloat16)
    cache.write(keys_of("a", "b"), {"e": value})
    ((positions, part),) = open_cache(tmp_path, "torch").read(keys_of("b", "a"))
    assert positions.tolist() == [0, 1] and part["e"].dtype == torch.bfloat16 and torch.equal(part["e"], value[[1, 0]])
    nan = value.clone()
    nan[1, 2] = float("nan")
    cache.write(keys_of("n", "m"), {"e": nan})  # non-finite rows are not stored
    assert not cache.shard_path(keys_of("n", "m")).exists() and not cache.contains(keys_of("n")).any()


def test_rows_that_do_not_match_the_keys_are_a_mistake_of_the_caller(tmp_path):
    with pytest.raises(ValueError, match="2 keys but rows"):
        open_cache(tmp_path).write(keys_of("a", "b"), {"v": rows(3)})


def damage(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[:-7])
    elif kind == "flipped":  # one byte of the tensor v's data: the header and the keys stay valid
        length = int.from_bytes(data[:8], "little")
        at = 8 + length + json.loads(data[8 : 8 + length])["v"]["data_offsets"][0]
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :])
    elif kind == "garbage":
        path.write_bytes(b"\x00garbage")


@pytest.mark.parametrize("kind", ["truncated", "flipped", "garbage", "nan", "rows", "old layout"])
def test_a_damaged_shard_is_skipped_with_one_warning_naming_it_deleted_and_rewritten(tmp_path, kind):
    cache = open_cache(tmp_path)
    keys = keys_of("a", "b")
    shard = cache.shard_path(keys)
    if kind == "nan":  # checksums intact: seen when the shard is read, not when the cache opens
        shard.write_bytes(shard_bytes(keys, {"v": np.full((2, 3), np.nan, np.float32)}))
    elif kind == "rows":
        shard.write_bytes(shard_bytes(keys, {"v": rows(1)}))
    elif kind == "old layout":  # train.cache's shards before this cache: keys in the metadata
        from safetensors.numpy import save_file

        save_file({"embeds": rows(2)}, str(shard), metadata={"keys": '["a", "b"]'})
    else:
        cache.write(keys, {"v": rows(2)})
        damage(shard, kind)
    cache.write(keys_of("c"), {"v": rows(1)})  # a good shard beside it
    with pytest.warns(UserWarning) as caught:
        again = open_cache(tmp_path)
        assert again.read(keys) == [] and not again.contains(keys).any()
        assert again.contains(keys_of("c")).all()
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert f"test cache: ignoring damaged shard {shard} (" in str(caught[0].message)
    assert not shard.exists()
    again.write(keys, {"v": rows(2)})  # the caller recomputes the misses; the next reader finds them
    ((_, part),) = open_cache(tmp_path).read(keys)
    np.testing.assert_array_equal(part["v"], rows(2))


def test_several_damaged_shards_are_one_warning_per_cache(tmp_path):
    cache = open_cache(tmp_path)
    for name in "abc":
        cache.write(keys_of(name), {"v": rows(1)})
        damage(cache.shard_path(keys_of(name)), "flipped" if name == "c" else "truncated")
    with pytest.warns(UserWarning) as caught:
        again = open_cache(tmp_path)  # a and b at opening, c (its data) when read
        assert again.contains(keys_of("c")).all() and again.read(keys_of("c")) == []
    assert len(caught) == 1


def test_a_shard_another_process_removed_is_a_plain_miss(tmp_path):
    cache = open_cache(tmp_path)
    cache.write(keys_of("a"), {"v": rows(1)})
    again = open_cache(tmp_path)
    cache.shard_path(keys_of("a")).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert again.read(keys_of("a")) == [] and not again.contains(keys_of("a")).any()


def test_a_folder_that_cannot_be_made_turns_the_cache_off_with_one_warning(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder under a regular file: mkdir fails even as root, where chmod would not
    with pytest.warns(UserWarning) as caught:
        for _ in range(2):  # reopened, as the trainer does after precomputing: still one warning
            cache = open_cache(blocker / "cache")
            cache.write(keys_of("a"), {"v": rows(1)})
            assert not cache.enabled and not cache.writable and cache.read(keys_of("a")) == []
    assert [str(w.message) for w in caught] == [
        f"test cache off: cannot use {blocker / 'cache'} (Not a directory); nothing is read from it or written to "
        "it (use another folder)"]


def test_a_failed_write_stops_writing_but_keeps_reading_with_one_warning(tmp_path):
    cache = open_cache(tmp_path / "c")
    cache.write(keys_of("a"), {"v": rows(1)})
    again = open_cache(tmp_path / "c")
    (tmp_path / "c").rename(tmp_path / "moved")
    (tmp_path / "c").write_text("")  # the folder is now a file: every write fails, as on a full disk
    with pytest.warns(UserWarning) as caught:
        for name in "xyz":
            again.write(keys_of(name), {"v": rows(1)})
    assert len(caught) == 1 and "test cache: cannot write to" in str(caught[0].message) and not again.writable
    (tmp_path / "c").unlink()
    (tmp_path / "moved").rename(tmp_path / "c")
    assert again.enabled and len(again.read(keys_of("a"))) == 1  # what is there is still served


WRITER = """
import sys, numpy as np
from core.tensor_cache import TensorCache, key_array
cache = TensorCache(sys.argv[1], label="writer", hint="")
for batch in range(30):
    # even batches are the same for both writers (same shard name), odd ones each writer's own
    owner = 0 if batch % 2 == 0 else int(sys.argv[2])
    keys = key_array([f"{owner}-{batch}-{i}".encode().ljust(20, b".") for i in range(64)])
    cache.write(keys, {"v": np.full((64, 256), batch + 1000 * owner, np.float32)})
"""


def writer_keys(owner: int, batch: int) -> np.ndarray:
    return key_array([f"{owner}-{batch}-{i}".encode().ljust(20, b".") for i in range(64)])


def test_two_writers_on_one_folder_never_corrupt_each_other(tmp_path):
    every_key = np.concatenate([writer_keys(owner, batch) for batch in range(30)
                                for owner in ((0,) if batch % 2 == 0 else (1, 2))])
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(rank)], cwd=ROOT)
               for rank in (1, 2)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a reader meanwhile never meets half a shard
            while any(w.poll() is None for w in writers):
                reader = open_cache(tmp_path)
                for positions, part in reader.read(every_key):
                    assert np.isfinite(part["v"]).all()
    finally:
        for w in writers:
            w.kill()
            w.wait()
    assert [w.returncode for w in writers] == [0, 0]
    assert not [p.name for p in tmp_path.iterdir() if not p.name.endswith(".safetensors")]  # no temp files left
    final = open_cache(tmp_path)
    assert len(final) == 64 * (15 + 15 * 2)
    for batch in range(30):
        for owner in ((0,) if batch % 2 == 0 else (1, 2)):
            ((_, part),) = final.read(writer_keys(owner, batch))
            assert (part["v"] == batch + 1000 * owner).all()
