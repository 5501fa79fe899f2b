"""Reference reproduction of *Show, Attend and Distill* (AFD, AAAI 2021) and the methods it compares."""

__version__ = "0.1.0"
