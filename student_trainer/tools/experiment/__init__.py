"""A whole comparison from one config file: ``python -m student_trainer.tools.experiment CONFIG.toml``.

One idea a module, in the order the command uses them:

- ``config``: the TOML config, its ``[quick]`` overrides, options as trainer flags, a group's options;
- ``teacher``: the teacher the groups learn from (a committed checkpoint, or trained and cached);
- ``records``: a run's record beside the results, and when a record may stand in for training it;
- ``training``: one run in its own trainer process, or its record reused;
- ``runner``: every group and seed, ``--jobs`` at a time (shared answer stores, ``match_compute`` order);
- ``results``: the numbers of ``results.json`` (groups, paired differences, verdict, convergence);
- ``markdown``: ``results.md``'s tables and page; ``figures``: the frontier plot;
- ``pipeline``: the experiment end to end; ``cli``: the command (``__main__`` runs it).
"""
