"""The app's Altair charts, built from the long-form rows that :mod:`workbench.session` computes."""

from __future__ import annotations

from typing import Any, Sequence

import altair as alt


def top_classes(rows: Sequence[dict[str, Any]], probabilities: bool = True) -> alt.Chart:
    """Horizontal bars of the top classes, best first."""
    value = "probability" if probabilities else "score"
    base = alt.Chart(alt.Data(values=list(rows))).encode(
        y=alt.Y("class:N", sort=alt.EncodingSortField("rank", order="ascending"), title=None),
        x=alt.X(f"{value}:Q", title="softmax probability" if probabilities else "score",
                scale=alt.Scale(domain=[0, 1]) if probabilities else alt.Undefined),
        tooltip=["rank:O", "class:N", alt.Tooltip("probability:Q", format=".3f"), alt.Tooltip("score:Q", format=".3f")],
    )
    bars = base.mark_bar(cornerRadiusEnd=3)
    labels = base.mark_text(align="left", dx=3).encode(text=alt.Text(f"{value}:Q", format=".2f"))
    return (bars + labels).properties(height=alt.Step(26))  # a fixed step per bar: Streamlit's theme pads a fixed height away


def agreement_heatmap(rows: Sequence[dict[str, Any]], metric: str) -> alt.Chart:
    """Methods x methods, coloured by agreement in [-1, 1] (Spearman) or [0, 1] (IoU)."""
    data = [r for r in rows if r["metric"] == metric]
    order = list(dict.fromkeys(r["a"] for r in data))
    signed = "Spearman" in metric
    base = alt.Chart(alt.Data(values=data)).encode(
        x=alt.X("b:N", sort=order, title=None, axis=alt.Axis(labelAngle=-30, labelLimit=160, labelOverlap=False)),
        y=alt.Y("a:N", sort=order, title=None, axis=alt.Axis(labelLimit=160)),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(
            "value:Q",
            title=metric,
            scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True) if signed else alt.Scale(scheme="blues", domain=[0, 1]),
        ),
        tooltip=["a:N", "b:N", alt.Tooltip("value:Q", format=".3f")],
    )
    text = base.mark_text(fontSize=13).encode(
        text=alt.Text("value:Q", format=".2f"),
        color=alt.condition("abs(datum.value) > 0.6", alt.value("white"), alt.value("black")),
    )
    size = 70 * len(order) + 40
    return (cells + text).properties(width=size, height=size, title=f"Agreement: {metric}")


def method_times(rows: Sequence[dict[str, Any]]) -> alt.Chart:
    base = alt.Chart(alt.Data(values=list(rows))).encode(
        y=alt.Y("method:N", title=None, sort=None, axis=alt.Axis(labelLimit=160)),
        x=alt.X("seconds:Q", title="seconds per image"),
        tooltip=["method:N", alt.Tooltip("seconds:Q", format=".3f"), "evaluations:Q"],
    )
    bars = base.mark_bar(cornerRadiusEnd=3)
    labels = base.mark_text(align="left", dx=3).encode(text=alt.Text("seconds:Q", format=".2f"))
    return (bars + labels).properties(height=alt.Step(30), title="Time per method")
