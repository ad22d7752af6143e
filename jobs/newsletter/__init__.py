"""Newsletters: templated e-mail to an audience, on a schedule, through a per-recipient ledger."""
