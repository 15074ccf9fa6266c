"""`deepspeed --module east_ds.train ...`: the documented entry point of the deepspeed launcher, kept at this path;
the command itself is east_ds.training.cli."""

import sys

from east_ds.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
