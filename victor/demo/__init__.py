"""`victor demo`, the main job: the paper's ablation in miniature on the tiny world.

    run.py      presets, arms, stages (reused when finished), evaluation
    report.py   tables and report.md from a plain results record
    figures.py  the report's figures
"""
