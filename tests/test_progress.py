"""Progress reporting: exact block ranges, one log line per block when no terminal is attached."""

import logging

from r2d.progress import blocks


def test_blocks_cover_the_range_and_log_each_block(caplog):
    with caplog.at_level(logging.INFO, logger="r2d"):
        got = list(blocks(10, 4, "simmx"))
    assert got == [(0, 4), (4, 8), (8, 10)]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["simmx: 4/10 particles (40%)", "simmx: 8/10 particles (80%)", "simmx: 10/10 particles (100%)"]


def test_empty_range_yields_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="r2d"):
        assert list(blocks(0, 4, "x")) == []
    assert caplog.records == []
