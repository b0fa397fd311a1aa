"""Reporting: the verdicts (findings) and their statistics, tables, projections, plots and how notebooks show them."""
