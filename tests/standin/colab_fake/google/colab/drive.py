"""A stand-in for ``google.colab.drive`` (tests only).

``mount(mountpoint)`` creates ``<mountpoint>/MyDrive`` (a link to ``$GI_STANDIN_DRIVE_DIR``
when that is set: the user's Drive with what they copied there), as Colab does after the
user allows access. With ``GI_STANDIN_DRIVE=0`` it fails like a refused authorisation.
"""

from __future__ import annotations

import os
from pathlib import Path

MOUNTS: list[str] = []


def mount(mountpoint: str, force_remount: bool = False, timeout_ms: int = 120000, readonly: bool = False) -> None:
    """Mount the user's Drive at ``mountpoint`` (``MyDrive`` below it).

    Raises:
        ValueError: the session was made without Drive (``GI_STANDIN_DRIVE=0``).
    """
    if os.environ.get("GI_STANDIN_DRIVE", "1") == "0":
        raise ValueError("mount failed: the user did not allow access to Google Drive (stand-in without Drive)")
    target = Path(mountpoint) / "MyDrive"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        source = os.environ.get("GI_STANDIN_DRIVE_DIR")
        if source:
            target.symlink_to(Path(source).resolve(), target_is_directory=True)
        else:
            target.mkdir()
    MOUNTS.append(str(mountpoint))
    print(f"Mounted at {mountpoint}")
