"""Rendering: terminal tables, plots and the HTML report."""
