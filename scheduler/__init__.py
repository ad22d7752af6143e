"""martech's mechanisms: settings, config, store, scheduling engine, delivery, CLI.

Nothing in this package knows what a newsletter is; job kinds live in ``jobs/``.
"""

__version__ = "0.1.0"
