"""Every ```python example in README.md and docs/*.md runs against the real API.

The ```python blocks of a page run in order in one namespace (a later block may use what an
earlier one defined), in a temporary working directory, on the CPU. Two markers, both
plain comments, adapt a page to the test:

- a block whose first line is ``# docs: skip -- <reason>`` is not run (it needs a GPU,
  several MPI processes or the network, or shows a value rather than code); the reason is
  required;
- an HTML comment ``<!-- docs-setup ... -->`` (invisible in the rendered page) holds code
  run before the page's next block, to define the names a fragment assumes (``model``,
  ``X``) on tiny data.

Pages listed in ``OWN_PROCESS`` (with the reason) run as one script in a new interpreter.
Other fences (``bash``, ``console``, ``text``) are not run. To stay fast on a busy machine,
``dn.datasets.load`` returns only the first 200 training and 60 test rows here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"#\s*docs:\s*skip\b\s*(?:--|:|—)?\s*(?P<reason>.*)")
SETUP = re.compile(r"<!--\s*docs-setup\s*\n(?P<code>.*?)-->", re.DOTALL)
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>[^`\n]*)$")

# A guard against examples that grow heavy (the whole module takes ~30 s on an idle 2-core
# machine, most of it importing scikit-learn, matplotlib and onnxruntime).
SECONDS_PER_PAGE = 30.0
TINY_TRAIN, TINY_TEST = 200, 60

# Pages whose examples change the process for good run in a fresh interpreter instead.
OWN_PROCESS = {
    "docs/distributed.md": "dn.distributed.init() starts MPI and installs an exception hook "
                           "that stay for the rest of the process",
}


def extract(text):
    """``[(kind, line, code, skip_reason)]`` of a Markdown page, in page order.

    ``kind`` is ``"setup"`` (a docs-setup comment) or ``"python"`` (a fenced block);
    ``line`` is the 1-based line of the fence or comment.
    """
    items = [("setup", text[:m.start()].count("\n") + 1, m.group("code"), None)
             for m in SETUP.finditer(text)]
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        ticks, indent = opening.group("ticks"), opening.group("indent")
        info = opening.group("info").strip().split()
        body = []
        i += 1
        while i < len(lines) and not re.match(rf"^{indent}{ticks}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        start = i - len(body)
        i += 1
        if info[:1] != ["python"]:
            continue
        code = textwrap.dedent("\n".join(body))
        first = code.lstrip().splitlines()[0] if code.strip() else ""
        marker = SKIP.match(first)
        items.append(("python", start, code, marker.group("reason").strip() if marker
                      else None))
    return sorted(items, key=lambda item: item[1])


def _pages_with_examples():
    return [page for page in PAGES
            if any(kind == "python" for kind, *_ in extract(page.read_text()))]


def _page_id(page):
    return str(page.relative_to(ROOT))


def test_the_collector_finds_blocks_markers_and_setups():
    page = textwrap.dedent('''\
        # t
        <!-- docs-setup
        x = 1
        -->
        ```python
        y = x + 1
        ```

        ```bash
        echo no
        ```

        1. a list

           ```python
           # docs: skip -- needs a GPU
           dn.set_device("gpu")
           ```
        ''')
    items = extract(page)
    assert [(kind, reason) for kind, _, _, reason in items] == [
        ("setup", None), ("python", None), ("python", "needs a GPU")]
    assert items[1][2] == "y = x + 1" and items[2][2].startswith("# docs: skip")
    assert items[1][1] == 5 and items[0][1] == 2


def test_readme_and_docs_have_examples():
    names = {_page_id(page) for page in _pages_with_examples()}
    assert {"README.md", "docs/quickstart.md", "docs/cli.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_skip_gives_a_reason(page):
    for kind, line, _, reason in extract(page.read_text()):
        if kind == "python" and reason is not None:
            assert len(reason) > 5, f"{_page_id(page)}:{line}: '# docs: skip' without a reason"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_images_referenced_by_a_page_exist(page):
    for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text()):
        if "://" not in target:
            assert (page.parent / target).is_file(), f"{_page_id(page)}: missing {target}"


# Defines ``_tiny_load``: ``dn.datasets.load`` cut to a few hundred rows (same features and
# classes). Source text, so that pages run in their own process get it too.
TINY_LOADER = f"""
import dataclasses
import dualnn as dn
_real_load = dn.datasets.load
def _tiny_load(*args, **kwargs):
    data = _real_load(*args, **kwargs)
    return dataclasses.replace(data, X_train=data.X_train[:{TINY_TRAIN}],
                               y_train=data.y_train[:{TINY_TRAIN}],
                               X_test=data.X_test[:{TINY_TEST}], y_test=data.y_test[:{TINY_TEST}])
"""


@pytest.fixture
def tiny_datasets(monkeypatch):
    import dualnn as dn

    namespace = {}
    exec(TINY_LOADER, namespace)  # noqa: S102
    monkeypatch.setattr(dn.datasets, "load", namespace["_tiny_load"])


def _run_in_own_process(page, tmp_path):
    """All of ``page``'s blocks as one script in a new interpreter (cwd ``tmp_path``)."""
    parts = [TINY_LOADER, "dn.datasets.load = _tiny_load\n"]
    for kind, line, code, reason in extract(page.read_text()):
        if reason is None:
            parts.append(f"# ---- {_page_id(page)}:{line} ({kind})\n{code}\n")
    script = tmp_path / "page.py"
    script.write_text("\n".join(parts))
    env = {**os.environ, "DUALNN_DEVICE": "cpu", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, (f"{_page_id(page)} (run as {script}) failed:\n"
                                    f"{result.stderr[-3000:]}")


@pytest.mark.filterwarnings("ignore:.*stopped at max_iter")  # tiny data, few epochs
@pytest.mark.parametrize("page", _pages_with_examples(), ids=_page_id)
def test_page_examples_run(page, tmp_path, monkeypatch, tiny_datasets):
    import matplotlib

    import dualnn as dn
    from dualnn.device import _reset_for_tests

    if _page_id(page) in OWN_PROCESS:
        started = time.perf_counter()
        _run_in_own_process(page, tmp_path)
        elapsed = time.perf_counter() - started
        assert elapsed < SECONDS_PER_PAGE, f"{_page_id(page)} took {elapsed:.1f} s"
        return
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DUALNN_DEVICE", "cpu")
    _reset_for_tests()
    namespace = {"__name__": f"docs_example_{page.stem}"}
    started = time.perf_counter()
    try:
        for kind, line, code, reason in extract(page.read_text()):
            if reason is not None:
                continue
            where = f"{_page_id(page)}:{line}"
            try:
                exec(compile(code, f"<{where} ({kind})>", "exec"), namespace)  # noqa: S102
            except Exception as exc:  # any failure of an example, reported with its place
                raise AssertionError(f"{where}: the {kind} block raised "
                                     f"{type(exc).__name__}: {exc}") from exc
    finally:
        from matplotlib import pyplot
        pyplot.close("all")
        _reset_for_tests()
        dn.seed(0)
    elapsed = time.perf_counter() - started
    assert elapsed < SECONDS_PER_PAGE, f"{_page_id(page)} took {elapsed:.1f} s: use less data"
