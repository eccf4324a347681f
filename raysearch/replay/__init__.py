"""Replaying searches against recorded benchmark tables: the table format (`table`), the
simulated cluster that drives the product's own searchers and schedulers over a table
(`simulator`), and the comparison of methods over many seeds (`compare`)."""
