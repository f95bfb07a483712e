"""Screenshot an HTML report with headless Chromium (Debian's ``chromium`` package), and check the PNG.

``bash infra/install-chromium.sh`` installs the browser. Each call runs one throwaway browser with its own
temporary profile directory; the HTML must be self-contained (the HTML report is), since the page is given
no time to fetch anything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import tempfile
from pathlib import Path

from tierflow.errors import ConfigError, TierflowError

BINARIES = ("chromium", "chromium-browser")
INSTALL_HINT = "install Debian's chromium (infra/install-chromium.sh)"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ScreenshotError(TierflowError):
    """Chromium ran but gave no usable screenshot: it failed, timed out, or the image is blank."""


def find_chromium() -> str | None:
    """The path of ``chromium`` or ``chromium-browser`` on PATH, or None."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(
    html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 2000, timeout: float = 120
) -> Path:
    """Renders ``html_path`` in headless Chromium at ``width`` x ``height`` and writes a PNG of the viewport.

    Args:
        html_path: The HTML file to render (opened as a ``file://`` URL).
        png_path: The PNG to write; its parent directories are created. An older file there is replaced.
        width: Window width in CSS pixels (the PNG's width at device scale factor 1).
        height: Window height in CSS pixels; content below it is cut off.
        timeout: Seconds to wait for Chromium before killing it.

    Returns:
        ``png_path`` as a Path.

    Raises:
        ConfigError: If Chromium is not installed, ``html_path`` does not exist, or the size is not positive.
        ScreenshotError: If Chromium fails or times out, or the PNG is missing, malformed or one colour.
    """
    binary = find_chromium()
    if binary is None:
        raise ConfigError(f"no {' or '.join(BINARIES)} on PATH: {INSTALL_HINT}")
    source = Path(html_path).resolve()
    if not source.is_file():
        raise ConfigError(f"cannot screenshot {source}: no such file")
    if width < 1 or height < 1:
        raise ConfigError(f"screenshot size must be positive, got {width}x{height}")
    out = Path(png_path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="tierflow-chromium-") as profile:
        command = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            f"--window-size={width},{height}",
            source.as_uri(),
        ]
        env = {**os.environ, "HOME": profile}
        returncode, output = _run(command, env, timeout)
    if returncode != 0:
        raise ScreenshotError(f"chromium exited with {returncode} rendering {source}:\n{_tail(output)}")
    if not out.is_file() or out.stat().st_size == 0:
        raise ScreenshotError(f"chromium wrote no screenshot to {out}:\n{_tail(output)}")
    size = png_size(out)
    if size != (width, height):
        raise ScreenshotError(f"screenshot {out} is {size[0]}x{size[1]}, expected {width}x{height}")
    if is_blank(out):
        raise ScreenshotError(
            f"screenshot {out} is a single colour: the page did not render:\n{_tail(output)}"
        )
    return out


def png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR header.

    Raises:
        ScreenshotError: If the file is not a PNG.
    """
    with Path(path).open("rb") as png:
        head = png.read(24)
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise ScreenshotError(f"{path} is not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def is_blank(path: str | Path) -> bool:
    """Whether every pixel of the image has the same colour (decoded with Pillow)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB").getcolors(maxcolors=1) is not None  # None: more than one colour


def _run(command: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Runs ``command`` in its own process group; on timeout kills that group (the browser and its helpers)."""
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as err:
            with contextlib.suppress(ProcessLookupError):  # the group already exited
                os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            text = output.decode("utf-8", "replace")
            raise ScreenshotError(f"chromium took longer than {timeout}s; killed:\n{_tail(text)}") from err
    return process.returncode, output.decode("utf-8", "replace")


def _tail(output: str, lines: int = 20) -> str:
    """The last lines of Chromium's output, without its dbus noise (no system bus in containers)."""
    kept = [line for line in output.splitlines() if "dbus" not in line and line.strip()]
    return "\n".join(kept[-lines:]) or "(no output)"
