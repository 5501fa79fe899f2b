"""`python -m afdistill ...`, as torchrun runs it: `torchrun --nproc_per_node=N -m afdistill train ...`."""

from .cli import main

main()
