"""`python -m mvos`: the same as the `mvos` command (and what `torchrun -m mvos` starts)."""

from mvos.cli import main

main()
