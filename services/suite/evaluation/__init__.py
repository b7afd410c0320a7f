"""Offline evaluation of the suite against baselines (``longtail eval``); protocol in README.md.

Modules: ``split`` (time splits, the cold-items split), ``metrics`` (DESIGN's definitions),
``baselines`` (most-popular, random, ALS, content-only, xQuAD), ``cold`` (the item cold-start
accuracy), ``serving`` (lists from the running gateway, the policy sweep),
``report`` (tables, CSV, plots), ``runner`` (the whole run: ``run_evaluation``) and ``command``
(the CLI subcommand). Nothing is imported here, so that the CLI stays quick to start.
"""
