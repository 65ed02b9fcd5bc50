"""The rendered report as one file that opens offline: network references removed and checked."""

from __future__ import annotations

import re

_EXTERNAL = re.compile(r"""<script[^>]*\bsrc=["']https?://[^"']*["'][^>]*>\s*</script>|<link[^>]*\bhref=["']https?://[^"']*["'][^>]*/?>""",
                       re.IGNORECASE)


def make_offline(html: str) -> str:
    """Remove every ``<script src=http…>`` and ``<link href=http…>`` (nbconvert's CDN MathJax and
    require.js): the report's equations are drawn inside its figures, so nothing is lost."""
    return _EXTERNAL.sub("", html)


def external_references(html: str) -> list[str]:
    """The ``src``/``href`` values of ``html`` that would fetch from the network."""
    return re.findall(r"""(?:src|href)\s*=\s*["']((?:https?:)?//[^"']+)["']""", html, flags=re.IGNORECASE)


def format_number(value) -> str:
    """A table cell for reading: no scientific notation, digits by magnitude (1,234; 12.3; 1.23; 0.123; 0.00001)."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}" if abs(value) >= 1e4 else str(int(value))
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    for limit, digits in ((100, 1), (1, 2), (0.01, 3)):
        if magnitude >= limit:
            return f"{value:.{digits}f}"
    return f"{value:.8f}".rstrip("0").rstrip(".") if magnitude >= 1e-8 else "0"


def table_html(table, index: bool = False) -> str:
    """``table`` (a DataFrame) as HTML for reading: numbers by :func:`format_number`, column names with spaces
    instead of underscores, cells escaped."""
    import html as html_lib

    frame = table.reset_index() if index else table
    head = "".join(f"<th>{html_lib.escape(str(c).replace('_', ' '))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html_lib.escape(format_number(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f'<table class="dataframe"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
