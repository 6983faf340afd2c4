"""The demo study, apart from the library: what it runs, what it claims, how it judges.

    demo.py      the pipeline of `rllc demo`: data, train, estimate, noise, probe, cluster, compare, report
    findings.py  the study's findings (its goals, the paper's claims and the rules that judge them), computed
                 from a results table with the library's analysis functions: numbers, tables, verdicts
    prose.py     their words: titles, methods, summaries and the claims' evidence, written from those numbers
    report.py    the findings as the first sections of the library's HTML report (`rllc report` passes them
                 in when a run directory holds the study's files; the library's report reads no study file)

The library (`rllc.analysis`, `rllc.runs`, ...) never imports this package; it sits above them (docs/design.md).
"""
