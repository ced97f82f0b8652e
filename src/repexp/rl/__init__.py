"""RL post-training (paper.md §3): GRPO, Unlikeliness and RepExp on TRL's ``GRPOTrainer``.

* :mod:`repexp.rl.rewards` -- the reward functions (TRL's reward-function style: picklable callables)
  and the pure Unlikeliness scale;
* :mod:`repexp.rl.trainer` -- the paper's hyper-parameters as a ``GRPOConfig`` (verl -> TRL) and the
  small ``GRPOTrainer`` subclass (exact prompt ids for the rewards, the Unlikeliness hook, timings);
* :mod:`repexp.rl.train` -- the training CLI of the ``rl_train`` rule (dev pass@1, best checkpoint,
  resumption);
* :mod:`repexp.rl.evaluate` -- the final pass@k evaluation.

The bonus maths itself is :mod:`repexp.bonus`.
"""
