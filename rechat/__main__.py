"""`python -m rechat` runs the command line."""

from rechat.cli import main

main()
