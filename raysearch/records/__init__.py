"""The records and names that cross modules: metric, tag and file names with their directions (`names`), a trial's outcome and a requirement (`results`), Pareto fronts and hypervolume (`pareto`)."""
