"""What people read: console and CSV tables, the end of a search, plots and the HTML report."""
