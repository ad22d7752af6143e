"""The store: what did happen (ARCHITECTURE.md, invariant 1). Tables, migrations, and small
repositories."""
