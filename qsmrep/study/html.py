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
