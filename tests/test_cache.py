"""The content-addressed stores: keys, location, verified round trips, corruption, races and per-key locks."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO
from mechcheck.cache import CACHE_FORMAT, ModelCache, Store, cache_key, default_cache_dir
from mechcheck.models import CheckpointError, build_gpt2, check_checkpoint_dir, load_checkpoint

PAYLOAD = {
    "recipe": "scratch",
    "architecture": {"n_layer": 1, "n_head": 2, "n_embd": 16},
    "task": {"generator": "cdm", "args": {"vocab": "words", "max_number": 9, "min_gap": 1}, "version": "1"},
    "train": {"steps": 30, "batch_size": 32, "lr": 3.0e-3},
    "seed": 0,
}
INFO = {"steps": 30, "final_eval_accuracy": 0.53, "curve": [[10, 0.5], [20, 0.52]]}


def _tiny_model(seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return build_gpt2({"n_layer": 1, "n_head": 2, "n_embd": 16}, vocab_size=10, n_positions=8)


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture
def cache(tmp_path: Path) -> ModelCache:
    return ModelCache(tmp_path / "cache")


def _leftovers(cache: ModelCache, key: str) -> list[Path]:
    parent = cache.entry(key).parent
    return sorted(p for p in parent.iterdir() if p.name.startswith(".")) if parent.exists() else []


# --------------------------------------------------------------------------------------------------------
# keys and location
# --------------------------------------------------------------------------------------------------------


def _reordered(obj):
    if isinstance(obj, dict):
        return {k: _reordered(obj[k]) for k in reversed(list(obj))}
    return obj


def test_cache_key_is_stable_and_order_independent():
    key = cache_key(PAYLOAD)
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    assert cache_key(json.loads(json.dumps(PAYLOAD))) == key
    assert list(_reordered(PAYLOAD)) != list(PAYLOAD)  # really a different insertion order
    assert cache_key(_reordered(PAYLOAD)) == key


def _with(path: tuple[str, ...], value):
    payload = json.loads(json.dumps(PAYLOAD))
    node = payload
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return payload


@pytest.mark.parametrize(
    "changed",
    [
        _with(("seed",), 1),
        _with(("recipe",), "finetune"),
        _with(("architecture", "n_embd"), 32),
        _with(("task", "version"), "2"),
        _with(("task", "args", "min_gap"), 2),
        _with(("train", "lr"), 1.0e-3),
        {**PAYLOAD, "parent": "a" * 64},
    ],
    ids=["seed", "recipe", "architecture", "task-version", "task-arg", "train-lr", "parent-key"],
)
def test_cache_key_changes_with_any_nested_value(changed):
    assert changed != PAYLOAD
    assert cache_key(changed) != cache_key(PAYLOAD)


def test_cache_key_changes_with_parent_key():
    a = {**PAYLOAD, "recipe": "finetune", "parent": "a" * 64}
    b = {**PAYLOAD, "recipe": "finetune", "parent": "b" * 64}
    assert cache_key(a) != cache_key(b)


def test_cache_key_includes_cache_format(monkeypatch):
    import mechcheck.cache as mc

    key = cache_key(PAYLOAD)
    monkeypatch.setattr(mc, "CACHE_FORMAT", CACHE_FORMAT + 1)
    assert mc.cache_key(PAYLOAD) != key


def test_default_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MECHCHECK_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    assert ModelCache().root == tmp_path / "explicit"

    monkeypatch.delenv("MECHCHECK_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "mechcheck"

    monkeypatch.setenv("MECHCHECK_CACHE_DIR", "")  # empty counts as unset
    assert default_cache_dir() == tmp_path / "xdg" / "mechcheck"

    monkeypatch.delenv("MECHCHECK_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "mechcheck"


def test_default_cache_dir_expands_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MECHCHECK_CACHE_DIR", "~/models")
    assert default_cache_dir() == tmp_path / "home" / "models"


def test_tests_use_an_isolated_cache():
    """conftest points the cache away from the user's; a test run must never touch ~/.cache/mechcheck."""
    assert os.environ.get("MECHCHECK_CACHE_DIR")
    assert default_cache_dir() != Path.home() / ".cache" / "mechcheck"


# --------------------------------------------------------------------------------------------------------
# round trip
# --------------------------------------------------------------------------------------------------------


def test_get_missing_returns_none(cache):
    assert cache.get(cache_key(PAYLOAD)) is None


def test_put_get_round_trip(cache, model):
    key = cache_key(PAYLOAD)
    path = cache.put(key, model, PAYLOAD, INFO)
    assert path == cache.entry(key) == cache.root / "models" / key[:2] / key
    names = {p.name for p in path.iterdir()}
    assert "config.json" in names and "mechcheck.json" in names
    assert any(n.endswith(".safetensors") for n in names)
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for n in names), names
    assert _leftovers(cache, key) == []

    hit = cache.get(key)
    assert hit is not None
    got_path, meta = hit
    assert got_path == path
    assert meta["key"] == key
    assert meta["payload"] == json.loads(json.dumps(PAYLOAD))
    assert meta["info"] == json.loads(json.dumps(INFO))
    assert set(meta["files"]) >= {"config.json"} and any(n.endswith(".safetensors") for n in meta["files"])

    loaded = load_checkpoint(str(got_path), local=True)
    expected, actual = model.state_dict(), loaded.state_dict()
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert actual[name].shape == tensor.shape, name
        assert (actual[name] == tensor).all(), name


def test_different_weights_are_not_confused(cache, model):
    """Two keys hold two models: a reload gives back each one's own weights."""
    other = _tiny_model(seed=1)
    k1, k2 = cache_key(PAYLOAD), cache_key({**PAYLOAD, "seed": 1})
    cache.put(k1, model, PAYLOAD, INFO)
    cache.put(k2, other, {**PAYLOAD, "seed": 1}, INFO)
    w = "transformer.wte.weight"
    l1 = load_checkpoint(str(cache.get(k1)[0]), local=True).state_dict()[w]
    l2 = load_checkpoint(str(cache.get(k2)[0]), local=True).state_dict()[w]
    assert (l1 == model.state_dict()[w]).all() and (l2 == other.state_dict()[w]).all()
    assert not (l1 == l2).all()


# --------------------------------------------------------------------------------------------------------
# corruption, interrupted writes, races
# --------------------------------------------------------------------------------------------------------


def _safetensors(path: Path) -> Path:
    files = sorted(path.glob("*.safetensors"))
    assert files
    return files[0]


def _flip_byte(path: Path) -> None:
    f = _safetensors(path)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    f = _safetensors(path)
    f.write_bytes(f.read_bytes()[:-16])


def _delete_meta(path: Path) -> None:
    (path / "mechcheck.json").unlink()


def _wrong_key(path: Path) -> None:
    meta = json.loads((path / "mechcheck.json").read_text())
    meta["key"] = "0" * 64
    (path / "mechcheck.json").write_text(json.dumps(meta))


def _garbage_meta(path: Path) -> None:
    (path / "mechcheck.json").write_text("{not json")


def _empty_files(path: Path) -> None:
    meta = json.loads((path / "mechcheck.json").read_text())
    meta["files"] = {}
    (path / "mechcheck.json").write_text(json.dumps(meta))


def _delete_weights(path: Path) -> None:
    _safetensors(path).unlink()


def _edit_config(path: Path) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg["n_layer"] = 2
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "corrupt",
    [_flip_byte, _truncate, _delete_meta, _wrong_key, _garbage_meta, _empty_files, _delete_weights, _edit_config],
)
def test_corrupted_entry_is_removed_and_rebuilt(cache, model, corrupt):
    key = cache_key(PAYLOAD)
    path = cache.put(key, model, PAYLOAD, INFO)
    assert cache.get(key) is not None
    corrupt(path)
    assert cache.get(key) is None
    assert not path.exists(), "a corrupted entry must be deleted so that it is rebuilt"
    assert cache.get(key) is None
    # the rebuild stores a fresh, valid entry under the same name
    assert cache.put(key, model, PAYLOAD, INFO) == path
    assert cache.get(key) is not None


def test_leftover_temporary_directory_is_never_returned(cache, model):
    """A run killed mid-write leaves `.<key prefix>-xxxx` next to the entries; it is not an entry."""
    key = cache_key(PAYLOAD)
    parent = cache.entry(key).parent
    parent.mkdir(parents=True)
    tmp = parent / f".{key[:12]}-abcd1234"
    model.save_pretrained(tmp, safe_serialization=True)  # even complete weights...
    (tmp / "mechcheck.json").write_text(json.dumps({"key": key, "payload": PAYLOAD, "info": {}, "files": {}}))
    assert cache.get(key) is None
    path = cache.put(key, model, PAYLOAD, INFO)
    hit = cache.get(key)
    assert hit is not None and hit[0] == path != tmp
    assert not path.name.startswith(".")
    # half-written: only a config, no weights, no metadata
    half = parent / f".{key[:12]}-half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    assert cache.get(key)[0] == path


def test_put_same_key_twice_leaves_one_valid_entry(cache, model):
    key = cache_key(PAYLOAD)
    first = cache.put(key, model, PAYLOAD, INFO)
    before = (first / "mechcheck.json").read_text()
    second = cache.put(key, _tiny_model(seed=0), PAYLOAD, {**INFO, "from": "second process"})
    assert second == first
    assert [p.name for p in first.parent.iterdir()] == [key], "one entry, no temporary directories left"
    hit = cache.get(key)
    assert hit is not None
    assert (first / "mechcheck.json").read_text() == before  # the verified first entry is kept


def test_put_replaces_a_stale_corrupt_entry(cache, model):
    key = cache_key(PAYLOAD)
    stale = cache.entry(key)
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"garbage")
    (stale / "mechcheck.json").write_text(json.dumps({"key": key, "files": {"model.safetensors": "0" * 64}}))
    path = cache.put(key, model, PAYLOAD, INFO)
    assert path == stale
    hit = cache.get(key)
    assert hit is not None and hit[1]["info"] == INFO
    assert [p.name for p in path.parent.iterdir()] == [key]
    load_checkpoint(str(path), local=True)


def test_put_over_an_empty_directory(cache, model):
    """An empty directory under the entry's name (e.g. a crashed mkdir) does not block storing."""
    key = cache_key(PAYLOAD)
    cache.entry(key).mkdir(parents=True)
    path = cache.put(key, model, PAYLOAD, INFO)
    assert cache.get(key) is not None and cache.get(key)[0] == path


# --------------------------------------------------------------------------------------------------------
# the generic Store (what the model cache and other kinds of entries are built on)
# --------------------------------------------------------------------------------------------------------


def _write_arrays(tmp: Path) -> None:
    (tmp / "a.bin").write_bytes(bytes(range(256)))
    (tmp / "sub").mkdir()
    (tmp / "sub" / "b.json").write_text('{"x": 1}')


def test_store_round_trip_layout_and_metadata(tmp_path):
    store = Store(tmp_path, "measurements")
    key = cache_key({"what": "effects", "seed": 0})
    assert store.get(key) is None
    path = store.put(key, _write_arrays, {"payload": {"what": "effects"}, "shape": [2, 3]})
    assert path == store.entry(key) == tmp_path / "measurements" / key[:2] / key
    got_path, meta = store.get(key)
    assert got_path == path
    assert meta["key"] == key and meta["payload"] == {"what": "effects"} and meta["shape"] == [2, 3]
    assert set(meta["files"]) == {"a.bin", "sub/b.json"}  # files in sub-folders are hashed too
    assert (path / "sub" / "b.json").read_text() == '{"x": 1}'
    assert store.partial_dir(key) == tmp_path / "partial" / key
    assert not store.partial_dir(key).exists()  # a path, created by whoever saves work in progress
    assert ModelCache(tmp_path).get(key) is None  # kinds do not see each other's entries


def test_store_nested_file_corruption_is_removed(tmp_path):
    store = Store(tmp_path, "measurements")
    key = cache_key({"n": 1})
    path = store.put(key, _write_arrays, {})
    (path / "sub" / "b.json").write_text('{"x": 2}')
    assert store.get(key) is None and not path.exists()


def test_store_refuses_writers_that_write_nothing_or_its_metadata(tmp_path):
    store = Store(tmp_path, "measurements")
    key = cache_key({"n": 2})
    with pytest.raises(ValueError, match="wrote no files"):
        store.put(key, lambda tmp: None, {})
    with pytest.raises(ValueError, match="mechcheck.json"):
        store.put(key, lambda tmp: (tmp / "mechcheck.json").write_text("{}"), {})
    with pytest.raises(ValueError, match="reserved"):
        store.put(key, _write_arrays, {"files": {}})
    assert store.get(key) is None
    assert [p.name for p in store.entry(key).parent.iterdir()] == [], "no temporary directory is left behind"


def test_store_writer_failure_leaves_nothing(tmp_path):
    store = Store(tmp_path, "measurements")
    key = cache_key({"n": 3})

    def fail(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"12")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.put(key, fail, {})
    assert store.get(key) is None and list(store.entry(key).parent.iterdir()) == []


@pytest.mark.parametrize("kind", ["", "locks", "partial", "a/b", ".hidden"])
def test_store_kind_must_be_a_plain_folder_name(tmp_path, kind):
    with pytest.raises(ValueError, match="kind"):
        Store(tmp_path, kind)


def test_old_layout_entries_are_not_found(cache, model):
    """Format-1 entries (root/<key[:2]>/<key>/) are simply not seen: the key covers CACHE_FORMAT."""
    key = cache_key(PAYLOAD)
    old = cache.root / key[:2] / key
    model.save_pretrained(old, safe_serialization=True)
    assert cache.get(key) is None
    assert cache.put(key, model, PAYLOAD, INFO) == cache.root / "models" / key[:2] / key


# --------------------------------------------------------------------------------------------------------
# per-key locks across processes
# --------------------------------------------------------------------------------------------------------

KEY = cache_key({"locked": True})
HOLDER = textwrap.dedent("""
    import sys
    from mechcheck.cache import Store
    with Store(sys.argv[1], "models").lock(sys.argv[2]):
        print("locked", flush=True)
        sys.stdin.readline()  # hold the lock until the test says so
""")


@pytest.fixture
def holder(tmp_path):
    """Start a process that takes the lock for KEY in tmp_path's store; yields the Popen once it holds it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), KEY], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked", "the holder process did not get the lock"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _can_lock_now(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # also releases it when taken
    return True


def test_lock_excludes_another_process_and_names_it(tmp_path, holder):
    lock_file = tmp_path / "locks" / f"{KEY}.lock"
    assert not _can_lock_now(lock_file)
    info = json.loads(lock_file.read_text())
    assert info["pid"] == holder.pid and info["host"] and info["since"]
    holder.communicate("release\n", timeout=30)
    assert holder.returncode == 0
    assert _can_lock_now(lock_file)
    assert lock_file.exists(), "lock files stay in place (deleting one races with waiters)"
    assert lock_file.read_text() == "", "a released lock no longer names its last holder"


def test_a_waiter_is_told_once_who_holds_the_lock_then_gets_it(tmp_path, holder):
    store = Store(tmp_path, "models")
    told: list[str] = []
    acquired = threading.Event()

    def wait_for_lock() -> None:
        with store.lock(KEY, on_wait=told.append):
            acquired.set()

    waiter = threading.Thread(target=wait_for_lock, daemon=True)
    waiter.start()
    deadline = time.monotonic() + 30
    while not told and time.monotonic() < deadline:
        time.sleep(0.01)
    info = json.loads((tmp_path / "locks" / f"{KEY}.lock").read_text())
    assert told == [f"process {holder.pid} on {info['host']} since {info['since']}"]
    time.sleep(0.2)
    assert not acquired.is_set(), "the lock was taken while another process held it"
    holder.stdin.write("release\n")
    holder.stdin.flush()
    assert acquired.wait(30), "the waiter never got the lock after the holder released it"
    waiter.join(30)
    assert len(told) == 1


@pytest.mark.parametrize("writes_name", [True, False])
def test_a_waiter_rereads_a_lock_file_its_holder_has_not_written_yet(tmp_path, writes_name):
    """Two builders started together: the waiter may read the lock file between the holder's flock and its
    write. It reads again (up to 2 s) instead of naming nobody; a holder that never writes is "another
    process". (flock excludes two open file descriptions even within one process, so a thread can wait.)"""
    store = Store(tmp_path, "models")
    lock_file = tmp_path / "locks" / f"{KEY}.lock"
    lock_file.parent.mkdir(parents=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held, name not written yet
    told: list[str] = []
    acquired = threading.Event()

    def wait_for_lock() -> None:
        with store.lock(KEY, on_wait=told.append):
            acquired.set()

    waiter = threading.Thread(target=wait_for_lock, daemon=True)
    try:
        waiter.start()
        time.sleep(0.3)
        assert told == [] and not acquired.is_set()
        if writes_name:
            os.pwrite(fd, json.dumps({"pid": 4242, "host": "elsewhere", "since": "now"}).encode(), 0)
        deadline = time.monotonic() + 30
        while not told and time.monotonic() < deadline:
            time.sleep(0.01)
        assert told == (["process 4242 on elsewhere since now"] if writes_name else ["another process"])
    finally:
        os.close(fd)
    assert acquired.wait(30)
    waiter.join(30)


def test_a_lock_held_by_a_killed_process_is_free(tmp_path, holder):
    lock_file = tmp_path / "locks" / f"{KEY}.lock"
    assert not _can_lock_now(lock_file)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert _can_lock_now(lock_file), "the OS did not release the flock of a killed process"
    told: list[str] = []
    with Store(tmp_path, "models").lock(KEY, on_wait=told.append):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert told == [], "nobody held the lock, yet the caller was told to wait"


# --------------------------------------------------------------------------------------------------------
# check_checkpoint_dir
# --------------------------------------------------------------------------------------------------------


def test_check_checkpoint_dir_accepts_a_safetensors_model(tmp_path, model):
    model.save_pretrained(tmp_path / "ok", safe_serialization=True)
    check_checkpoint_dir(tmp_path / "ok")  # no error


def test_check_checkpoint_dir_missing(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="does not exist") as exc:
        check_checkpoint_dir(missing)
    assert str(missing) in str(exc.value)


def test_check_checkpoint_dir_file_not_dir(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not a directory") as exc:
        check_checkpoint_dir(f)
    assert str(f) in str(exc.value)


def test_check_checkpoint_dir_without_config(tmp_path, model):
    d = tmp_path / "noconfig"
    model.save_pretrained(d, safe_serialization=True)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json") as exc:
        check_checkpoint_dir(d)
    assert str(d) in str(exc.value)


def test_check_checkpoint_dir_only_pickle_bin(tmp_path):
    d = tmp_path / "onlybin"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(CheckpointError) as exc:
        check_checkpoint_dir(d)
    assert str(d) in str(exc.value)


def test_check_checkpoint_dir_pickled_weights_refused(tmp_path, model):
    d = tmp_path / "pickled"
    model.save_pretrained(d, safe_serialization=True)
    _safetensors(d).unlink()
    import torch

    torch.save(model.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled weights are refused") as exc:
        check_checkpoint_dir(d)
    msg = str(exc.value)
    assert str(d) in msg and "pytorch_model.bin" in msg
    # and load_checkpoint goes through the same check instead of unpickling
    with pytest.raises(CheckpointError, match="pickled weights are refused"):
        load_checkpoint(str(d), local=True)
