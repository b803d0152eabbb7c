"""A run folder remembers the recipe and config it was made with; resuming under other settings is refused."""

from __future__ import annotations

import pytest

from pathkit.config import Config
from pathkit.io import PathkitError
from pathkit.train.recipes import get_recipe
from pathkit.train.runner import _claim_run_dir


def test_resume_refuses_a_folder_of_another_recipe_or_config(tmp_path):
    cfg = Config.from_name("tiny")
    quilt, pa = get_recipe("quilt_llava", "tiny"), get_recipe("pa_llava", "tiny")
    _claim_run_dir(tmp_path, quilt, cfg, resume=True)
    _claim_run_dir(tmp_path, quilt, cfg, resume=True)  # same settings: resumable
    with pytest.raises(PathkitError, match=r"recipe\.yaml: this run folder was made with a different recipe"):
        _claim_run_dir(tmp_path, pa, cfg, resume=True)
    with pytest.raises(PathkitError, match=r"config\.yaml: this run folder was made with a different config"):
        _claim_run_dir(tmp_path, quilt, cfg.override({"train.num_workers": 2}), resume=True)
    _claim_run_dir(tmp_path, pa, cfg, resume=False)  # retraining takes the folder over
    assert "pa_llava" in (tmp_path / "recipe.yaml").read_text()
