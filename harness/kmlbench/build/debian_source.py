"""Debian source packages through a private apt configuration: one rule, in one place.

The static fio for the guest (:mod:`kmlbench.build.fio_build`) and the
QEMU plugin header (:mod:`kmlbench.build.qemu_plugin`) both come from the
distribution's own *source* packages. apt is pointed at a deb-src entry,
package lists and caches in our own cache dir (``cache_dir()/debian-src/``),
so the host's apt setup is never read nor touched, and the lists are
fetched (``apt-get update``) only when a package is not in them yet.

Everything a step runs goes to a log; a failed step raises
:class:`SourceError` naming the step and the log.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kmlbench import procs
from kmlbench.paths import cache_dir

DEBIAN_SOURCES = """\
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


class SourceError(Exception):
    """A source package could not be listed, fetched or built; the message says which step."""


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise builds: several engineers share one cache on one machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def apt_dir(cache: Path | None = None) -> Path:
    """The private apt configuration's folder (sources, lists, downloaded archives)."""
    return (cache or cache_dir()) / "debian-src"


def apt_options(apt: Path) -> list[str]:
    """Point apt at private sources, lists and caches: the host's stay untouched."""
    opts = [
        "-o", "Dir::Etc::SourceList=/dev/null",
        "-o", f"Dir::Etc::SourceParts={apt / 'parts'}",
        "-o", f"Dir::State::Lists={apt / 'lists'}",
        "-o", f"Dir::Cache={apt / 'cache'}",
        "-o", "Debug::NoLocking=1",
    ]  # fmt: skip
    if os.geteuid() == 0:
        # _apt cannot write into root's cache dir; do not print a warning per file.
        opts += ["-o", "APT::Sandbox::User=root"]
    return opts


def run_logged(cmd: list[str], cwd: Path, log: Path, what: str, timeout: float = 900) -> str:
    """Run ``cmd`` with its output appended to ``log``; :class:`SourceError` if it fails."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        try:
            proc = procs.run(
                cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, timeout=timeout, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceError(f"{what}: {exc} (log: {log})") from exc
        out.write(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-15:])
        raise SourceError(f"{what} failed (exit {proc.returncode}, log: {log}):\n{tail}")
    return str(proc.stdout)


def source_versions(package: str, apt: Path, log: Path) -> list[str]:
    """The versions of source ``package`` in our private lists, newest first.

    Runs ``apt-get update`` (private lists only) when the package is not
    listed yet; :class:`SourceError` when it is not listed after that either.
    """
    with file_lock(apt / ".lock"):
        (apt / "parts").mkdir(parents=True, exist_ok=True)
        (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (apt / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        sources = apt / "parts" / "debian-src.sources"
        if not sources.exists() or sources.read_text() != DEBIAN_SOURCES:
            sources.write_text(DEBIAN_SOURCES)
        opts = apt_options(apt)

        def showsrc() -> list[str]:
            try:
                out = procs.run(
                    ["apt-cache", *opts, "showsrc", package],
                    capture_output=True, text=True, timeout=120, check=False,
                ).stdout  # fmt: skip
            except (OSError, subprocess.TimeoutExpired):
                return []
            return re.findall(r"^Version: (\S+)$", out, flags=re.MULTILINE)

        versions = showsrc()
        if not versions:
            run_logged(["apt-get", *opts, "update"], apt, log, "apt-get update (deb-src)", 300)
            versions = showsrc()
    if not versions:
        raise SourceError(f"no {package} source package in {sources} (log: {log})")
    return versions


def download_source(package: str, version: str, apt: Path, work: Path, log: Path) -> Path:
    """``apt-get source --download-only package=version`` into ``work``; its ``.dsc``.

    The orig tarball, the Debian tarball and the ``.dsc`` land beside it.
    """
    run_logged(
        ["apt-get", *apt_options(apt), "source", "--download-only", f"{package}={version}"],
        work, log, f"apt-get source {package}={version}", 900,
    )  # fmt: skip
    upstream = version.split(":", 1)[-1]
    dsc = next(work.glob(f"{package}_{upstream}.dsc"), None) or next(
        work.glob(f"{package}_*.dsc"), None
    )
    if dsc is None:
        raise SourceError(f"apt-get source left no .dsc in {work} (log: {log})")
    return dsc


def installed_source_version(binary_package: str) -> str:
    """The source version an installed binary package was built from (``dpkg-query``).

    A binNMU (``+b3``) is built from its source version without the suffix:
    dpkg's ``source:Version`` says which.
    """
    try:
        proc = procs.run(
            ["dpkg-query", "-W", "-f", "${source:Version}", binary_package],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"dpkg-query {binary_package}: {exc}") from exc
    version = str(proc.stdout).strip()
    if proc.returncode != 0 or not version:
        raise SourceError(
            f"{binary_package} is not installed (dpkg-query: {proc.stderr.strip() or 'no version'})"
        )
    return version


def compiler_id() -> str:
    """The C compiler's first ``--version`` line: part of every build cache key."""
    try:
        out = procs.run(["cc", "--version"], capture_output=True, text=True, check=True)
        return str(out.stdout).splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError) as exc:
        raise SourceError("no C compiler (apt-get install build-essential)") from exc
