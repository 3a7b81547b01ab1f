"""``python -m lfm2_edge.cli``: the ``lfm2-edge`` command line."""

from lfm2_edge.cli import main

if __name__ == "__main__":
    main()
