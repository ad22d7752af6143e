"""One pipeline, several ends (ARCHITECTURE.md, invariant 7): render → message → SMTP | file |
console."""
