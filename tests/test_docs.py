"""The docs: the site builds in strict mode (a broken link, a missing anchor or a page left out of the navigation
fails it), README.md stays a front door (under 200 lines, linking only to files that exist), and the commands
README.md and the pages print exist: each ``uniroute X``, ``python -m MODULE`` and ``benchmarks.NAME``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: a Markdown link or image target: ](target) with an optional title
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
#: a `uniroute SUBCOMMAND` (options and the program's path aside)
COMMAND = re.compile(r"(?:^|[\s/`])uniroute ([a-z][a-z-]+)")
#: `python -m MODULE`, and a benchmark named as `benchmarks.NAME` (not the page benchmarks.md)
MODULE = re.compile(r"python -m ([a-z_][a-z0-9_.]*[a-z0-9_])")
BENCHMARK = re.compile(r"\bbenchmarks\.(?!md\b)([a-z_]+)")


def build_site(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of ``project``'s mkdocs.yml into ``site``, as `make docs` runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
    )


def test_the_site_builds_in_strict_mode_with_every_page(tmp_path):
    built = build_site(ROOT, tmp_path / "site")
    assert built.returncode == 0, built.stderr
    pages = sorted(p.relative_to(ROOT / "docs").with_suffix(".html") for p in (ROOT / "docs").rglob("*.md"))
    assert pages and all((tmp_path / "site" / page).is_file() for page in pages)


@pytest.mark.parametrize(
    ("page", "text", "named"),
    [
        ("broken-link.md", "See [nowhere](no-such-page.md).", "no-such-page.md"),
        ("broken-anchor.md", "See [the gateway](serving.md#no-such-section).", "no-such-section"),
        ("not-in-nav.md", "A page nobody can reach.", "not-in-nav.md"),
    ],
)
def test_a_broken_link_or_a_page_left_out_of_the_navigation_fails_the_build(tmp_path, page, text, named):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "docs", project / "docs")
    shutil.copy(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    (project / "docs" / page).write_text(f"# A page\n\n{text}\n")
    if page != "not-in-nav.md":
        config = project / "mkdocs.yml"
        config.write_text(config.read_text().replace("nav:\n", f"nav:\n  - Extra: {page}\n", 1))
    built = build_site(project, tmp_path / "site")
    assert built.returncode != 0
    assert named in built.stderr


def test_the_readme_fits_on_a_screen_and_names_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) < 200
    assert "make demo" in text and "make test" in text


def test_the_readme_links_only_to_files_that_exist():
    targets = [t for t in LINK.findall(README.read_text()) if not re.match(r"[a-z]+://|mailto:|#", t)]
    assert targets, "README.md links to the docs"
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def printed(pattern: re.Pattern[str]) -> set[str]:
    """What ``pattern`` finds in README.md and the docs pages."""
    return {found for page in PAGES for found in pattern.findall(page.read_text())}


def test_every_uniroute_command_the_docs_print_exists(capsys):
    """Each ``uniroute X`` answers ``X --help`` through the installed entry point (pyproject's [project.scripts])."""
    module, function = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["uniroute"].split(":")
    main = getattr(importlib.import_module(module), function)
    commands = printed(COMMAND)
    assert {"route", "serve", "refresh", "import-results"} <= commands
    for command in sorted(commands):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0, f"uniroute {command} --help: {capsys.readouterr().err}"


def test_every_module_and_benchmark_the_docs_run_exists():
    modules = printed(MODULE) | {f"benchmarks.{name}" for name in printed(BENCHMARK)}
    assert "benchmarks.routing_quality" in modules
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    assert not missing, f"the docs run modules that do not exist: {missing}"
