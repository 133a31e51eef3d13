"""megatron_patch.training.metrics.read_metrics: the one reader of SAVE/metrics.jsonl."""
import json

import pytest

from megatron_patch.training.metrics import MetricsError, read_metrics

RECORDS = [{"kind": "train", "step": 1, "loss": 5.0}, {"kind": "eval", "step": 1, "val_loss": 5.5}]


def _write(path, text):
    path.write_text(text)
    return path


def test_reads_a_file_or_a_run_directory(tmp_path):
    text = "".join(json.dumps(r) + "\n" for r in RECORDS)
    _write(tmp_path / "metrics.jsonl", text[:-1] + "\n\n")  # a blank line is skipped
    assert read_metrics(str(tmp_path / "metrics.jsonl")) == RECORDS
    assert read_metrics(str(tmp_path)) == RECORDS
    assert read_metrics(str(tmp_path / "nothing")) == []


def test_torn_last_line_is_ignored(tmp_path):
    text = "".join(json.dumps(r) + "\n" for r in RECORDS) + '{"kind": "train", "st'
    assert read_metrics(str(_write(tmp_path / "metrics.jsonl", text))) == RECORDS


def test_damaged_middle_line_is_an_error(tmp_path):
    text = json.dumps(RECORDS[0]) + "\n" + '{"kind": "tr\n' + json.dumps(RECORDS[1]) + "\n"
    path = _write(tmp_path / "metrics.jsonl", text)
    with pytest.raises(MetricsError, match=r"metrics.jsonl:2: not valid JSON"):
        read_metrics(str(path))
