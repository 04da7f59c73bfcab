"""Preset lookup (configs/ in a checkout, $SIGNDISTILL_CONFIGS, the copy a wheel ships) and its packaging."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from distill.recipes import recipe_path
from models.train import load_config
from preprocess import configs
from preprocess.configs import PRESETS_ENV, ConfigError, preset_dir, preset_names, preset_path
from preprocess.datasets import load_dataset_config

ROOT = Path(__file__).resolve().parents[1]


def _presets(root: Path, recipes: tuple[str, ...]) -> Path:
    for name in recipes:
        (root / "recipes").mkdir(parents=True, exist_ok=True)
        (root / "recipes" / f"{name}.yaml").write_text("student: {}\n")
    return root


def test_checkout_presets_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PRESETS_ENV, raising=False)
    assert preset_dir("recipes") == ROOT / "configs" / "recipes"
    assert "kdmslrt" in preset_names("recipes")
    assert recipe_path("kdmslrt") == ROOT / "configs" / "recipes" / "kdmslrt.yaml"
    # the repository-relative paths that recipes and the Makefile carry resolve outside the checkout
    assert preset_path("configs/teachers/keypoints_small.yaml") == ROOT / "configs" / "teachers" / "keypoints_small.yaml"
    assert preset_path("configs/teachers/nope.yaml") == Path("configs/teachers/nope.yaml")
    assert load_config("keypoints_small").data.dataset == load_config(ROOT / "configs/teachers/keypoints_small.yaml").data.dataset


def test_env_var_first_then_checkout(tmp_path, monkeypatch):
    own = _presets(tmp_path / "own", ("mine",))
    monkeypatch.setenv(PRESETS_ENV, str(own))
    assert preset_names("recipes") == ["mine"]
    assert recipe_path("mine") == own / "recipes" / "mine.yaml"
    assert preset_dir("datasets") == ROOT / "configs" / "datasets"  # not in the user's folder: the next root
    monkeypatch.setenv(PRESETS_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=f"{PRESETS_ENV}=.*missing: not a folder"):
        preset_dir("recipes")


def test_wheel_copy_used_without_a_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(PRESETS_ENV, raising=False)
    site = tmp_path / "site-packages"
    (site / "configs" / "recipes").mkdir(parents=True)  # an unrelated top-level configs/ is not the checkout's
    monkeypatch.setattr(configs, "_REPO", site)
    monkeypatch.setattr(configs, "_PACKAGED", _presets(site / "preprocess" / "presets", ("kdmslrt",)))
    assert recipe_path("kdmslrt") == site / "preprocess" / "presets" / "recipes" / "kdmslrt.yaml"


def test_no_presets_is_one_line_naming_the_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv(PRESETS_ENV, raising=False)
    monkeypatch.setattr(configs, "_REPO", tmp_path)
    monkeypatch.setattr(configs, "_PACKAGED", tmp_path / "presets")
    for call in (lambda: recipe_path("kdmslrt"), lambda: load_dataset_config("synthsign"),
                 lambda: load_config("synthsign_rgb")):
        with pytest.raises(ConfigError) as e:
            call()
        assert PRESETS_ENV in str(e.value) and "\n" not in str(e.value)


def test_pyproject_lists_every_package_and_ships_every_preset_folder():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    code = {".".join(p.parent.relative_to(ROOT).parts)
            for top in ("preprocess", "models", "distill", "evaluate") for p in (ROOT / top).rglob("__init__.py")}
    assert code <= listed, f"add {sorted(code - listed)} to [tool.setuptools] packages"
    assert setup["package-dir"] == {"preprocess.presets": "configs"}
    kinds = {p.name for p in (ROOT / "configs").iterdir() if p.is_dir() and any(p.glob("*.yaml"))}
    assert kinds >= {"datasets", "recipes", "teachers", "synthsign"}
    for kind in kinds:
        assert f"preprocess.presets.{kind}" in listed
        assert setup["package-data"][f"preprocess.presets.{kind}"] == ["*.yaml"]
    for pkg in (ROOT / "evaluate").iterdir():  # data folders inside packages (the web page)
        if pkg.is_dir() and pkg.name != "__pycache__" and not (pkg / "__init__.py").exists():
            assert f"evaluate.{pkg.name}" in listed
