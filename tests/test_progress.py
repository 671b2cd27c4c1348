"""progress.counted: batches pass through unchanged while a bar counts their images."""

import numpy as np

from image_classifier.progress import counted


def test_counted_yields_the_batches_and_counts_their_images(capsys):
    batches = [np.zeros((4, 2, 2, 3), np.uint8), np.ones((3, 2, 2, 3), np.uint8)]
    passed = list(counted(iter(batches), total=7, desc="scoring"))
    assert [batch.tolist() for batch in passed] == [batch.tolist() for batch in batches]
    shown = capsys.readouterr().err
    assert "scoring: 100%" in shown and "7/7" in shown and "img/s" in shown
