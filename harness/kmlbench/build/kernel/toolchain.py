"""Which host tools build the kernel: the version strings that enter the cache keys.

gcc's first ``--version`` line is part of the build key; ld's, pahole's and
rustc's are part of the config keys (6.1's Kconfig records them in
``.config``). A tool upgrade therefore never reuses what an older one made.
"""

from __future__ import annotations

import subprocess

from kmlbench import procs
from kmlbench.build.kernel.common import KernelBuildError


def compiler_version() -> str:
    """First line of ``gcc --version``: part of the build key.

    A compiler upgrade changes the generated code (and the Kconfig
    CC_VERSION), so it must not reuse builds from the old compiler.
    """
    try:
        out: str = procs.run(
            ["gcc", "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise KernelBuildError(f"cannot run gcc --version: {e}") from e
    return out.splitlines()[0].strip()


def toolchain_fingerprint() -> str:
    """Versions of the tools Kconfig probes besides gcc (ld, pahole, rustc).

    6.1's Kconfig records LD_VERSION, PAHOLE_VERSION and Rust availability
    in .config, so a memoized config is only valid for the same tools.
    """
    lines = []
    for tool in (["ld", "--version"], ["pahole", "--version"], ["rustc", "--version"]):
        try:
            out: str = procs.run(tool, capture_output=True, text=True, check=False).stdout
        except OSError:
            out = ""
        lines.append(out.splitlines()[0] if out else f"{tool[0]}: none")
    return "\n".join(lines)
