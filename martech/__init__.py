"""The composition root: the one place that joins the mechanisms (``scheduler``) with the job
kinds (``jobs``). Nothing imports it but the entry points and tests."""
