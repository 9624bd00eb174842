"""A pretraining run: :mod:`~solo_mixmask.run.pretrain` builds and trains it,
:mod:`~solo_mixmask.run.resume` continues one; :mod:`~solo_mixmask.run.trainer` (the Lightning
trainer and its callbacks), :mod:`~solo_mixmask.run.folder` (its files),
:mod:`~solo_mixmask.run.loggers`, :mod:`~solo_mixmask.run.console` (what it prints) and
:mod:`~solo_mixmask.run.bad_files` (unreadable images it skipped)."""
