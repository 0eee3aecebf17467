"""`python -m cylindria`: the same as `python cylindria.py` and the installed `cylindria` command."""
import sys

from cylindria.cli import main

sys.exit(main())
