"""One pipeline, several ends (DESIGN invariant 7): render → message → SMTP | file | console."""
