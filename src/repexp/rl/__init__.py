"""RL post-training (paper.md §3): GRPO, Unlikeliness and RepExp on TRL's ``GRPOTrainer``.

* :mod:`repexp.rl.methods` -- the table of RL methods (reward, ranks, base-model forward, label,
  colour): the only list of them;
* :mod:`repexp.rl.settings` -- the settings the workflow needs to build the DAG (a task's resolved
  section, a run's ``--settings``, dev and test splits, run names);
* :mod:`repexp.rl.rewards` -- the reward functions (TRL's reward-function style: picklable
  callables) and the pure Unlikeliness scale;
* :mod:`repexp.rl.trainer` -- the paper's hyper-parameters as a ``GRPOConfig`` (verl -> TRL) and the
  small ``GRPOTrainer`` subclass (exact prompt ids for the rewards, the Unlikeliness hook, timings);
* :mod:`repexp.rl.train` -- the training CLI of the ``rl_train`` rule, with :mod:`repexp.rl.run`
  (a run's state and tables), :mod:`repexp.rl.dev` (dev pass@1 sampling),
  :mod:`repexp.rl.callbacks` (dev evaluations, training log, time budget) and
  :mod:`repexp.rl.checkpoints` (best-model swap, resumption, publishing);
* :mod:`repexp.rl.evaluate` -- the final pass@k evaluation.

The bonus maths itself is :mod:`repexp.bonus`.
"""
