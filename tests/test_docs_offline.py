"""The built docs render math without a network: MathJax is served from the build itself.

Builds the HTML docs into a temporary folder (about 30 s) and inspects the math page.
"""

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

for _module in ("sphinx", "numpydoc", "myst_parser", "pydata_sphinx_theme"):
    pytest.importorskip(_module, reason="the docs extra is not installed")

DOCS = Path(__file__).resolve().parent.parent / "docs"


class _Resources(HTMLParser):
    """Collects the ``src`` of scripts and the ``href`` of stylesheet links."""

    def __init__(self):
        super().__init__()
        self.scripts = []
        self.stylesheets = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])
        if tag == "link" and "stylesheet" in (attrs.get("rel") or "") and attrs.get("href"):
            self.stylesheets.append(attrs["href"])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-b", "html", str(DOCS), str(out)],
        check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stderr[-3000:]}"
    return out


def _remote(url):
    return url.startswith(("http://", "https://", "//"))


@pytest.mark.slow
def test_math_page_loads_mathjax_from_the_build(built):
    page = built / "math.html"
    text = page.read_text(encoding="utf-8")
    assert r"\(" in text or r"\[" in text, "math.md no longer contains math to render"
    parser = _Resources()
    parser.feed(text)
    remote = [src for src in parser.scripts if _remote(src)]
    assert remote == [], f"math.html loads scripts from the network: {remote}"
    mathjax = [src for src in parser.scripts if "mathjax" in src.lower()]
    assert mathjax, f"math.html loads no MathJax script; scripts: {parser.scripts}"
    for src in mathjax:
        local = (page.parent / src.split("?")[0]).resolve()
        assert local.is_file(), f"{src} is referenced by math.html but missing from the build"
        assert built.resolve() in local.parents
    fonts = list((local.parent / "output" / "chtml" / "fonts").rglob("*.woff"))
    assert fonts, "MathJax's CHTML fonts are not in the build"


@pytest.mark.slow
def test_no_page_needs_the_network_for_scripts_or_styles(built):
    for page in built.glob("*.html"):
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8"))
        remote = [url for url in parser.scripts + parser.stylesheets if _remote(url)]
        assert remote == [], f"{page.name} loads from the network: {remote}"
