"""Reporting from records: statistics over seeds, tables (CSV and Markdown), and figures.

``plotting`` draws arrays (filter grids, reconstructions, loss curves, shared layout),
``compare_plots`` the comparison's figures from run records, ``workdir_figures`` writes the
figure files of a workdir, ``tables`` the summaries, ``stats`` the tests behind them.
"""
