"""Recording the settings a log of samples was drawn with (spot_fast.sampling.settings)."""
import json

import pytest

from spot_fast.sampling.settings import claim


@pytest.mark.parametrize("log", [None, b"", b"\n\n", b'{"id": "a", "respo'], ids=["absent", "empty", "blank", "cut"])
def test_a_log_without_a_complete_sample_is_unclaimed(tmp_path, log):
    settings, samples = tmp_path / "s.json", tmp_path / "log.jsonl"
    if log is not None:
        samples.write_bytes(log)
    claim(settings, {"model": "a"}, samples, "--dir")
    claim(settings, {"model": "b"}, samples, "--dir")  # nothing drawn yet: the new settings replace the old
    assert json.loads(settings.read_text()) == {"model": "b"}


def test_a_log_with_samples_refuses_other_settings_and_keeps_its_own(tmp_path):
    settings, samples = tmp_path / "s.json", tmp_path / "log.jsonl"
    claim(settings, {"model": "a", "t": 0.7}, samples, "--dir")
    samples.write_text('{"id": "x"}\n')
    claim(settings, {"model": "a", "t": 0.7}, samples, "--dir")
    with pytest.raises(ValueError, match=r"log.jsonl holds samples drawn with other settings \(model: 'a' then, "
                                         r"'b' now, t: 0.7 then, None now\); use another --dir"):
        claim(settings, {"model": "b"}, samples, "--dir")
    assert json.loads(settings.read_text()) == {"model": "a", "t": 0.7}
    settings.unlink()
    with pytest.raises(ValueError, match="holds samples but .*s.json does not record what drew them"):
        claim(settings, {"model": "a", "t": 0.7}, samples, "--dir")
