"""``python -m boxd`` runs the command line."""

from __future__ import annotations

from boxd.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
