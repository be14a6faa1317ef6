"""``python -m better.cli``: the ``better`` command."""

from better.cli import main

if __name__ == "__main__":
    main()
