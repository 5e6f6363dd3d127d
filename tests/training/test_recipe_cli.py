"""The recipe command lines (segmentation and registration share one): bad recipes are one sentence."""

import pytest

from medpipe.registration import recipe as registration_recipe
from medpipe.training import recipe as training_recipe


@pytest.mark.parametrize("module", [training_recipe, registration_recipe], ids=["training", "registration"])
def test_missing_or_malformed_recipe_is_one_sentence(module, tmp_path, capsys):
    out = tmp_path / "bundle"
    missing = tmp_path / "nope.yaml"
    assert module.main([str(missing), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: recipe {missing} could not be read") and len(err.splitlines()) == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text("training: [unclosed\n")
    assert module.main([str(broken), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"recipe {broken} could not be read" in err and "Traceback" not in err
    assert not out.exists()
