"""``promptclimb reproduce``: the paper's table (datasets × seeds × backbones) in one command.

For every dataset found in CoOp's layout under ``--data-root`` and every (seed, backbone), the
command registers the few-shot set with every backbone's scorer, runs one search with a named
*profile* on the backbone's model of one coordinator (``--parallel`` searches at a time; each
also scores its prompts on the other backbones' models: the transfer table), and records a
finished cell in ``cells.jsonl`` in ``--out``. From the finished cells it writes ``results.csv``,
``transfer.csv``, ``cells.csv`` and ``results.md`` (see docs/REPRODUCE.md). Resumable: a cell is
appended (and fsynced) only once finished, and a search is started with a request id derived
from its cell, so a rerun skips finished cells and picks up a search a killed run left running.

Modules, pure planning and tables first (unit-tested directly), then gRPC, processes and the CLI:

- :mod:`~promptclimb.reproduce.catalogue`: CoOp's datasets, split generators and discovery;
- :mod:`~promptclimb.reproduce.profiles`: the search protocols (``paper``, ``released``);
- :mod:`~promptclimb.reproduce.cells`: one cell per search and the resumable results store;
- :mod:`~promptclimb.reproduce.tables`: mean ± std over seeds, the CSV and Markdown tables;
- :mod:`~promptclimb.reproduce.driver`: the gRPC run of a plan (model ids, concurrent searches);
- :mod:`~promptclimb.reproduce.local_services`: ``--start-services`` on this machine;
- :mod:`~promptclimb.reproduce.command`: the ``reproduce`` command line.
"""
