"""``python -m kyu_trio``: the ``kyu-trio`` command line."""

from ._cli import main

if __name__ == "__main__":
    main()
