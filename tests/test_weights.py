"""ddpo3d.weights: local paths, HF cache lookup without downloads, the missing-weights error."""

import os
import pickle

import pytest
from helpers import fake_hf_file

from ddpo3d import weights
from ddpo3d.weights import WeightsNotFoundError, find_hf_file, resolve_weights_file, split_hf_spec


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def no_download(monkeypatch):
    """Fail loudly if anything tries to reach the hub."""
    import huggingface_hub

    def boom(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)


def test_error_message_names_model_places_and_how():
    err = WeightsNotFoundError("MyModel v2", ["local file: /a/b.pt", "Hugging Face cache: /c"], "set foo: /path")
    msg = str(err)
    assert "MyModel v2" in msg and "/a/b.pt" in msg and "Hugging Face cache: /c" in msg and "set foo: /path" in msg
    assert isinstance(err, FileNotFoundError)
    assert err.looked_in == ["local file: /a/b.pt", "Hugging Face cache: /c"]
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == msg


def test_offline_flag_is_reported(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.hf_offline() and "HF_HUB_OFFLINE is set" in str(WeightsNotFoundError("m", [], "x"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not weights.hf_offline()


def test_cache_dirs_follow_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert weights.hf_cache_dir() == os.path.join(str(tmp_path / "home"), "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub2"))
    assert weights.hf_cache_dir() == str(tmp_path / "hub2")
    monkeypatch.setenv("DDPO3D_CACHE", str(tmp_path / "d"))
    assert weights.ddpo3d_cache_dir() == str(tmp_path / "d")
    monkeypatch.setenv("HOME", str(tmp_path / "u"))
    assert weights.open_clip_cache_dir() == os.path.join(str(tmp_path / "u"), ".cache", "clip")


def test_split_hf_spec():
    assert split_hf_spec("org/repo/file.pth") == ("org/repo", "file.pth")
    assert split_hf_spec("org/repo/sub/dir/file.bin") == ("org/repo", "sub/dir/file.bin")
    assert split_hf_spec("file.pth") is None
    assert split_hf_spec("org/file.pth") is None
    assert split_hf_spec("/abs/path/file.pth") is None
    assert split_hf_spec("./rel/path/file.pth") is None
    assert split_hf_spec("org//file") is None


def test_local_path_wins(tmp_path, hf_cache, no_download):
    f = tmp_path / "w.pt"
    f.write_bytes(b"x")
    assert resolve_weights_file("m", str(f)) == str(f)


def test_home_is_expanded(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "w.pt").write_bytes(b"x")
    assert resolve_weights_file("m", "~/w.pt") == str(tmp_path / "w.pt")


def test_hub_reference_found_in_cache(hf_cache, no_download):
    expected = fake_hf_file(hf_cache, "org/repo", "sub/w.pth")
    assert resolve_weights_file("m", "org/repo/sub/w.pth") == expected
    assert find_hf_file("org/repo", "sub/w.pth") == expected
    assert find_hf_file("org/repo", "other.pth") is None


def test_defaults_are_tried_in_order(tmp_path, hf_cache, no_download):
    second = tmp_path / "second.pt"
    second.write_bytes(b"x")
    assert resolve_weights_file("m", None, [str(tmp_path / "first.pt"), str(second)]) == str(second)
    hub = fake_hf_file(hf_cache, "org/repo", "w.bin")
    assert resolve_weights_file("m", None, [str(tmp_path / "none.pt")], [("org/repo", "w.bin")]) == hub


def test_not_found_lists_every_place(tmp_path, hf_cache, no_download):
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights_file(
            "Some model", None, [str(tmp_path / "a.pt")], [("org/repo", "w.bin")], how_to_get="set some_key"
        )
    msg = str(err.value)
    assert "Some model" in msg and str(tmp_path / "a.pt") in msg
    assert os.path.join(str(hf_cache), "models--org--repo") in msg and "w.bin" in msg
    assert "set some_key" in msg
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights_file("Other", "org/repo/missing.pth", how_to_get="do this")
    assert "local file: org/repo/missing.pth" in str(err.value) and "models--org--repo" in str(err.value)


def test_directory_is_not_a_weights_file(tmp_path, no_download):
    with pytest.raises(WeightsNotFoundError, match="exists but is not a file"):
        resolve_weights_file("m", str(tmp_path))


def test_download_only_when_explicitly_allowed_and_online(hf_cache, monkeypatch):
    calls = []
    import huggingface_hub

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename))
        return "/downloaded"

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("DDPO3D_ALLOW_DOWNLOAD", raising=False)
    assert find_hf_file("org/repo", "w.bin") is None and calls == []
    monkeypatch.setenv("DDPO3D_ALLOW_DOWNLOAD", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert find_hf_file("org/repo", "w.bin") is None and calls == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert find_hf_file("org/repo", "w.bin") == "/downloaded"
    assert calls == [("org/repo", "w.bin")]
