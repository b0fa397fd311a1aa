"""Reporting: the verdicts (findings), an edition's tables and sentences (discussion), projections, plots."""
