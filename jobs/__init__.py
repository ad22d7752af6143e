"""Job kinds: one module per kind, each a small unit built on ``scheduler/``."""
