"""Tracking reports: what the campaigns did and how the hosting held up, as HTML, CSV, JSON."""
