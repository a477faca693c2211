"""The local driver: trials in this process, on the search session (:mod:`autoprune.study.session`).

Several processes may run the same config at once (``autoprune search`` in several terminals): they share the
journal file (or database) and each proposes its own trials (its own sampler seed). Run the same command again
after an interruption to resume: completed trials are kept, trials of dead workers are failed and retried.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from ..config import SearchConfig
from .front import front_records
from .session import SearchSession, open_session

__all__ = ["run_local", "run_session"]


def run_session(session: SearchSession, *, progress: bool = False,
                on_trial: Callable[[SearchSession, FrozenTrial], None] | None = None) -> optuna.Study:
    """Run trials of ``session`` in this process (with a progress bar when ``progress``) until the study has
    ``n_trials`` COMPLETE trials; returns the study."""
    cfg, study = session.cfg, session.study
    done = session.n_complete()
    if done:
        session.log(f"resuming study {cfg.study!r}: {done} of {cfg.n_trials} trials complete")
    if done >= cfg.n_trials:
        return study
    bar = None
    callbacks = [on_trial] if on_trial is not None else []
    if progress:
        bar = tqdm(total=cfg.n_trials, initial=done, desc=f"{cfg.study}", unit="trial", dynamic_ncols=True)
        _progress_postfix(bar, cfg, study)

        def update(s: SearchSession, t: FrozenTrial) -> None:
            bar.n = s.n_complete()
            _progress_postfix(bar, cfg, s.study)

        callbacks.append(update)
    opt_logger = logging.getLogger("optuna")
    level = opt_logger.level
    if progress:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        session.run(on_trial=lambda s, t: [cb(s, t) for cb in callbacks])
    finally:
        opt_logger.setLevel(level)
        if bar is not None:
            bar.close()
    return study


def run_local(config: Any, *, n_trials: int | None = None, storage: str | None = None, study_name: str | None = None,
              progress: bool = False, log: Callable[[str], None] | None = None, patience: float | None = None) -> Any:
    """Open the session of ``config``, run it here, return its :class:`~autoprune.study.ParetoFront`."""
    with open_session(config, n_trials=n_trials, storage=storage, study_name=study_name, log=log,
                      patience=patience, progress=False) as session:
        run_session(session, progress=progress)
        return session.front()


def _progress_postfix(bar: Any, cfg: SearchConfig, study: optuna.Study) -> None:
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    front = front_records(study, cfg)
    if front:
        best = max(front, key=lambda r: r.accuracy)
        bar.set_postfix_str(f"trial {min(bar.n + 1, cfg.n_trials)}/{cfg.n_trials} running={running} front={len(front)} "
                            f"best={best.accuracy:.2%}@{best.macs_fraction:.0%} MACs", refresh=True)
    else:
        bar.set_postfix_str(f"trial {min(bar.n + 1, cfg.n_trials)}/{cfg.n_trials} front=0", refresh=True)
