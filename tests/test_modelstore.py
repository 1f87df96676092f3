import pickle

import pytest

from aeflow import modelstore


def test_a_model_folder_without_safetensors_is_refused_not_unpickled(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()

    class Boom:
        def __reduce__(self):
            return (exec, ("open(r'%s', 'w').write('pwned')" % (tmp_path / "pwned"),))

    (folder / "model.pt").write_bytes(pickle.dumps(Boom()))
    (folder / "config.json").write_text('{"model": {"kind": "codec"}}')
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        modelstore.load_model(str(folder))
    assert not (tmp_path / "pwned").exists()


def test_shipped_models_load_by_name_with_stable_fingerprints():
    prints = modelstore.shipped_fingerprints()
    assert set(prints.values()) == {"codec-default", "codec-e1318b0f", "denoise-default", "deblock-default",
                                    "deblur-default", "inpaint-default"}
    for fp, name in prints.items():
        assert modelstore.load_model(name).fingerprint == fp


def test_unknown_model_name_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="shipped models: codec-default, codec-e1318b0f, deblock-default"):
        modelstore.load_model("no-such-model")
