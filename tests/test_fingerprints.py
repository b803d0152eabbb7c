"""Drift caught as drift: the tiny preset's data generators and initial weights against recorded fingerprints.

If a library release (or an edit) changes what a generator draws, this fails naming the generator, the parts that
moved and the package versions, instead of surfacing later as a learning target missed by float rounding.
After a deliberate change: ``make fingerprints`` (``PATHKIT_REFRESH_FINGERPRINTS=1``) rewrites the record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pathkit import fingerprints as F
from pathkit.provenance import package_versions

RECORD = Path(__file__).parent / "fingerprints.json"
REFRESH = os.environ.get("PATHKIT_REFRESH_FINGERPRINTS") == "1"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def recorded() -> dict:
    if REFRESH:
        return {}
    assert RECORD.exists(), f"{RECORD} missing: run make fingerprints"
    return json.loads(RECORD.read_text())


@pytest.mark.parametrize("generator", sorted(F.GENERATORS))
def test_generator_output_matches_its_fingerprint(generator, recorded):
    actual = F.GENERATORS[generator]()
    if REFRESH:
        data = json.loads(RECORD.read_text()) if RECORD.exists() else {}
        data[generator] = actual
        data["_versions"] = package_versions(F.DATA_PACKAGES)
        RECORD.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"refreshed {generator}")
    assert generator in recorded, f"{generator}: no fingerprint recorded: run make fingerprints"
    problems = F.compare(recorded[generator], actual)
    versions = package_versions(F.DATA_PACKAGES)
    then = recorded.get("_versions", {})
    moved = {k: (then.get(k), v) for k, v in versions.items() if then.get(k) != v}
    assert not problems, (f"generator {generator!r} output changed: {'; '.join(problems)}. Packages now: {versions}; "
                          f"changed since the record (then, now): {moved or 'none'}. If the change is deliberate, "
                          "run make fingerprints")


def test_the_comparison_sees_a_small_change_and_tolerates_float_noise():
    """A generator altered on purpose fails; rounding noise of one grey level in a pixel does not."""
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    want = {"pixels": F.close(F.block_means(image, 8), atol=1.0), "text": F.exact(["a caption"])}
    noisy = image.copy()
    noisy[::7, ::5] = np.clip(noisy[::7, ::5].astype(int) + 1, 0, 255)  # float rounding: +1 level here and there
    assert F.compare(want, {"pixels": F.close(F.block_means(noisy, 8), atol=1.0),
                            "text": F.exact(["a caption"])}) == []
    stained = np.clip(image.astype(int) * 0.97, 0, 255).astype(np.uint8)  # a stain constant moved by 3%
    problems = F.compare(want, {"pixels": F.close(F.block_means(stained, 8), atol=1.0),
                                "text": F.exact(["a caption."])})
    assert [p.split(":")[0] for p in problems] == ["pixels", "text"], problems
