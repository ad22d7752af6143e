"""The store: what did happen (DESIGN invariant 1). Tables, migrations, and small repositories."""
