"""The large-batch tools at the top level: ``dn.LossScaler``, ``dn.summary``,
``dn.estimate_memory``."""

from __future__ import annotations

import types

import dualnn as dn
from dualnn import precision


def _model():
    return dn.Sequential(dn.layers.Linear(4, 8), dn.layers.ReLU(), dn.layers.Linear(8, 3))


def test_top_level_names():
    import dualnn.memory as summary_module  # noqa: F401

    assert dn.LossScaler is precision.LossScaler
    assert isinstance(dn.summary, types.FunctionType)
    assert isinstance(dn.estimate_memory, types.FunctionType)
    for name in ("LossScaler", "summary", "estimate_memory"):
        assert name in dn.__all__


def test_summary_table_and_html():
    model = _model()
    s = dn.summary(model, batch_size=None, precision="float32")
    text = str(s)
    assert "Linear" in text and str(4 * 8 + 8 + 8 * 3 + 3) in text.replace(",", "")
    html = s._repr_html_()
    assert html.startswith("<") and "Linear" in html
    assert dn.estimate_memory(model, 64) > dn.estimate_memory(model, 1) > 0
