"""Cylindria: the authenticated door to a host's ComfyUI instances.

Run: python cylindria.py --port 8000 --numberOfGpus 2 (or `python -m cylindria`, or the
installed `cylindria` command). The code is the `cylindria` package's (cylindria/cli.py).
"""
import sys

# From the checkout `import cylindria` finds the package directory cylindria/, not this file:
# a package wins over a module of the same name in one folder, so this launcher never shadows
# it (and it is not installed: setup.py installs the package and a console script).
from cylindria.cli import main

if __name__ == "__main__":
    sys.exit(main())
