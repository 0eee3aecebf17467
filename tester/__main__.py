"""Run the tester with ``python -m tester``."""

from tester.app import main

if __name__ == "__main__":
    raise SystemExit(main())
