# Token-level RepExp (paper.md section 2): hardest solvable questions -> runs -> tables.
