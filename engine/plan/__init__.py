"""Planning from measurements: the recommendation, the experiment planner, the comparison of runs
and the exports. Pure functions of plain data: no I/O, no database, no device."""
